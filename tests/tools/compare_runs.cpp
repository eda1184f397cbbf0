// compare_runs A B [--from-step K] [--loss-rtol X] [--norm-rtol Y] [--param-rtol Z]: two `dgemma sft` run
// directories computed the same thing. Every step of A's metrics.jsonl from K on must be in B with the
// diffusion, AR and total losses within X relative and the grad norm within Y relative; and the masters
// of the latest checkpoints of both runs must agree tensor by tensor: max |a - b| <= Z · max |a| (the
// tensor's scale; elements near zero of a tensor are held to the same absolute bound). Prints the worst
// differences; exit 0 when everything holds, 1 otherwise, 2 on bad input. A test tool: the end-to-end
// tests use it to compare whole runs on different meshes.
#include <cmath>
#include <cstdio>
#include <fstream>
#include <map>
#include <string>

#include <nlohmann/json.hpp>

#include "io/checkpoint.h"

namespace {

std::map<long, nlohmann::json> read_metrics(const std::string& run) {
  std::map<long, nlohmann::json> out;
  std::ifstream in(run + "/metrics.jsonl");
  if (!in) throw std::runtime_error("cannot read " + run + "/metrics.jsonl");
  for (std::string line; std::getline(in, line);) {
    const nlohmann::json j = nlohmann::json::parse(line);
    out[j.at("step").get<long>()] = j;
  }
  return out;
}

double rel(double a, double b) { return std::abs(a - b) / std::max(std::abs(a), 1e-30); }

}  // namespace

int main(int argc, char** argv) {
  if (argc < 3) {
    std::fprintf(stderr, "usage: compare_runs A B [--from-step K] [--loss-rtol X] [--norm-rtol Y] [--param-rtol Z]\n");
    return 2;
  }
  const std::string a = argv[1], b = argv[2];
  long from = 1;
  double loss_rtol = 1e-5, norm_rtol = 1e-4, param_rtol = 1e-5;
  for (int i = 3; i + 1 < argc; i += 2) {
    const std::string o = argv[i];
    const double v = std::stod(argv[i + 1]);
    if (o == "--from-step") from = static_cast<long>(v);
    else if (o == "--loss-rtol") loss_rtol = v;
    else if (o == "--norm-rtol") norm_rtol = v;
    else if (o == "--param-rtol") param_rtol = v;
    else {
      std::fprintf(stderr, "compare_runs: unknown option %s\n", o.c_str());
      return 2;
    }
  }
  try {
    bool ok = true;
    const auto ma = read_metrics(a), mb = read_metrics(b);
    double worst_loss = 0, worst_norm = 0;
    long steps = 0;
    for (const auto& [step, ja] : ma) {
      if (step < from) continue;
      const auto it = mb.find(step);
      if (it == mb.end()) {
        std::printf("step %ld: missing in %s\n", step, b.c_str());
        ok = false;
        continue;
      }
      ++steps;
      for (const char* k : {"loss", "diffusion_loss", "ar_loss"})
        worst_loss = std::max(worst_loss, rel(ja.at(k).get<double>(), it->second.at(k).get<double>()));
      worst_norm = std::max(worst_norm, rel(ja.at("grad_norm").get<double>(), it->second.at("grad_norm").get<double>()));
    }
    if (steps == 0) {
      std::printf("no steps to compare\n");
      ok = false;
    }
    std::printf("%ld steps: worst loss difference %.3g relative (tolerance %.3g), worst grad norm %.3g (tolerance %.3g)\n",
                steps, worst_loss, loss_rtol, worst_norm, norm_rtol);
    ok = ok && worst_loss <= loss_rtol && worst_norm <= norm_rtol;

    dg::CheckpointReader ra = dg::CheckpointReader::open(a + "/checkpoints");
    dg::CheckpointReader rb = dg::CheckpointReader::open(b + "/checkpoints");
    double worst = 0;
    std::string worst_key;
    long tensors = 0;
    for (const auto& [key, t] : ra.manifest().tensors) {
      if (key.rfind("master/", 0) != 0) continue;
      if (!rb.has(key)) {
        std::printf("%s: missing in %s\n", key.c_str(), b.c_str());
        ok = false;
        continue;
      }
      const dg::Tensor x = ra.read_as(key, dg::Slice::whole(t.shape), dg::DType::F32);
      const dg::Tensor y = rb.read_as(key, dg::Slice::whole(t.shape), dg::DType::F32);
      double scale = 0, diff = 0;
      for (std::int64_t i = 0; i < x.numel(); ++i) {
        scale = std::max(scale, static_cast<double>(std::abs(x.data<float>()[i])));
        diff = std::max(diff, static_cast<double>(std::abs(x.data<float>()[i] - y.data<float>()[i])));
      }
      const double r = diff / std::max(scale, 1e-30);
      if (r > worst) worst = r, worst_key = key;
      ++tensors;
    }
    std::printf("%ld tensors at step %lld: worst parameter difference %.3g of the tensor's max (%s; tolerance %.3g)\n",
                tensors, static_cast<long long>(ra.step()), worst, worst_key.c_str(), param_rtol);
    if (ra.step() != rb.step()) {
      std::printf("checkpoint steps differ: %lld vs %lld\n", static_cast<long long>(ra.step()),
                  static_cast<long long>(rb.step()));
      ok = false;
    }
    ok = ok && tensors > 0 && worst <= param_rtol;
    std::printf("%s\n", ok ? "SAME" : "DIFFERENT");
    return ok ? 0 : 1;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "compare_runs: %s\n", e.what());
    return 2;
  }
}
