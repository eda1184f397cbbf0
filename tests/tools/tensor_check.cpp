// tensor_check: what the end-to-end tests assert about the tensors of HF directories and checkpoints.
//
//   tensor_check expect DIR EXPECTED.json
//       DIR holds exactly the tensors EXPECTED.json lists ("tensors": {name: {"dtype", "shape"}}, made by
//       scripts/fixtures/make_init_fixtures.py from transformers' own model): none missing, none unexpected,
//       the same shapes and dtypes. Where an entry has "init" (the statistics of HF's freshly initialised
//       tensor: numel, mean, std, min, max), DIR's values must have the same statistics: a constant tensor
//       (HF's min == max) must hold exactly that value everywhere; a random one must have
//         |std - std_hf| <= 6 std_hf / sqrt(n)   and   |mean - mean_hf| <= 6 std_hf sqrt(2 / n)
//       (6 standard errors of the difference of two independent samples of n normal values).
//   tensor_check carried-equal IN OUT
//       every tensor of the HF directory IN that the text model does not use (io/hf_names.h: Carried) is in
//       the HF directory OUT with the same dtype, shape and bytes, and OUT has no other carried tensor.
//   tensor_check checkpoint-carried IN CKPT
//       the same for the checkpoint CKPT (a ckpt_dir or a step directory): "carried/<name>" for each.
// Prints what differs; exit 0 when everything holds ("OK" on the last line), 1 otherwise, 2 on bad input.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <set>
#include <sstream>
#include <string>

#include <nlohmann/json.hpp>

#include "io/checkpoint.h"
#include "io/hf_names.h"
#include "io/safetensors.h"

namespace {

using dg::ShardedSafetensors;
using nlohmann::json;

int problems = 0;

template <class... A>
void problem(const char* fmt, A... a) {
  if (++problems <= 40) {
    std::fprintf(stdout, "FAIL: ");
    std::fprintf(stdout, fmt, a...);
    std::fputc('\n', stdout);
  }
}

std::string shape_of(const dg::Shape& s) { return dg::shape_str(s); }

struct Stats {
  double n = 0, mean = 0, std = 0, min = INFINITY, max = -INFINITY;
};

Stats stats_of(const ShardedSafetensors& files, const std::string& name) {
  const dg::SafetensorsEntry& e = files.entry(name);
  const dg::Tensor raw = files.tensor(name);
  const dg::Tensor f = raw.to(dg::DType::F32);
  const float* v = f.data<float>();
  Stats s;
  s.n = static_cast<double>(e.numel());
  double sum = 0;
  for (std::int64_t i = 0; i < e.numel(); ++i) {
    sum += v[i];
    s.min = std::min<double>(s.min, v[i]);
    s.max = std::max<double>(s.max, v[i]);
  }
  s.mean = s.n > 0 ? sum / s.n : 0;
  double sq = 0;
  if (std::isfinite(s.mean))
    for (std::int64_t i = 0; i < e.numel(); ++i) sq += (v[i] - s.mean) * (v[i] - s.mean);
  s.std = s.n > 1 ? std::sqrt(sq / (s.n - 1)) : 0;  // torch.std: unbiased
  return s;
}

// A statistic of the fixture: a number, or "inf" / "-inf" (JSON has no infinities).
double number(const json& v) {
  if (v.is_string()) {
    if (v == "inf") return INFINITY;
    if (v == "-inf") return -INFINITY;
    throw std::runtime_error("not a number: " + v.dump());
  }
  return v.get<double>();
}

void check_init(const ShardedSafetensors& files, const std::string& name, const json& want, int& constant, int& random,
                double& worst) {
  const double min = number(want.at("min")), max = number(want.at("max"));
  const Stats s = stats_of(files, name);
  if (min == max) {  // a constant: exactly that value everywhere (+-inf included)
    ++constant;
    if (!(s.min == min && s.max == max)) problem("%s: HF initialises it to %g everywhere, found values in [%g, %g]",
                                                 name.c_str(), min, s.min, s.max);
    return;
  }
  ++random;
  const double hf_std = number(want.at("std")), hf_mean = number(want.at("mean"));
  const double std_tol = 6 * hf_std / std::sqrt(s.n), mean_tol = 6 * hf_std * std::sqrt(2 / s.n);
  worst = std::max(worst, std::abs(s.std - hf_std) / std_tol);
  if (std::abs(s.std - hf_std) > std_tol || std::abs(s.mean - hf_mean) > mean_tol)
    problem("%s: mean %.6g std %.6g; HF's init: mean %.6g std %.6g (tolerances %.3g, %.3g over %.0f values)",
            name.c_str(), s.mean, s.std, hf_mean, hf_std, mean_tol, std_tol, s.n);
}

int expect(const std::string& dir, const std::string& expected_path) {
  std::ifstream in(expected_path);
  if (!in) throw std::runtime_error("cannot read " + expected_path);
  const json expected = json::parse(in).at("tensors");
  const ShardedSafetensors files = ShardedSafetensors::open(dir);
  const std::vector<std::string> names = files.names();
  const std::set<std::string> have(names.begin(), names.end());
  int constant = 0, random = 0;
  double worst = 0;
  for (const auto& [name, want] : expected.items())  // the name sets first: they say the most
    if (!have.count(name))
      problem("MISSING %s (%s %s)", name.c_str(), want.at("dtype").get<std::string>().c_str(), want.at("shape").dump().c_str());
  for (const std::string& name : have)
    if (!expected.contains(name)) problem("UNEXPECTED %s", name.c_str());
  for (const auto& [name, want] : expected.items()) {
    if (!have.count(name)) continue;
    const dg::SafetensorsEntry& e = files.entry(name);
    const dg::Shape shape = want.at("shape").get<dg::Shape>();
    if (e.shape != shape || e.dtype != want.at("dtype").get<std::string>())
      problem("%s: %s %s, HF has %s %s", name.c_str(), e.dtype.c_str(), shape_of(e.shape).c_str(),
              want.at("dtype").get<std::string>().c_str(), shape_of(shape).c_str());
    else if (want.contains("init"))
      check_init(files, name, want.at("init"), constant, random, worst);
  }
  std::printf("%zu tensors expected, %zu in %s; HF's init statistics checked on %d constant and %d random tensors "
              "(worst std difference %.2f of its tolerance)\n", expected.size(), have.size(), dir.c_str(), constant,
              random, worst);
  return problems == 0 ? 0 : 1;
}

std::vector<std::string> carried_names(const ShardedSafetensors& files) {
  std::vector<std::string> out;
  for (const std::string& n : files.names())
    if (dg::hf_to_native(n).kind == dg::HfName::Kind::Carried) out.push_back(n);
  return out;
}

bool same_bytes(const void* a, const void* b, std::size_t n) { return n == 0 || std::memcmp(a, b, n) == 0; }

int carried_equal(const std::string& in_dir, const std::string& out_dir) {
  const ShardedSafetensors in = ShardedSafetensors::open(in_dir), out = ShardedSafetensors::open(out_dir);
  const std::vector<std::string> want = carried_names(in), got = carried_names(out);
  std::uint64_t bytes = 0;
  for (const std::string& n : want) {
    if (std::find(got.begin(), got.end(), n) == got.end()) {
      problem("%s: carried tensor %s is missing", out_dir.c_str(), n.c_str());
      continue;
    }
    const dg::SafetensorsEntry &a = in.entry(n), &b = out.entry(n);
    const auto ba = in.bytes(n), bb = out.bytes(n);
    if (a.dtype != b.dtype || a.shape != b.shape || ba.size() != bb.size() || !same_bytes(ba.data(), bb.data(), ba.size()))
      problem("%s: %s %s %s differs from the input's %s %s", out_dir.c_str(), n.c_str(), b.dtype.c_str(),
              shape_of(b.shape).c_str(), a.dtype.c_str(), shape_of(a.shape).c_str());
    bytes += ba.size();
  }
  for (const std::string& n : got)
    if (std::find(want.begin(), want.end(), n) == want.end()) problem("%s: unexpected carried tensor %s", out_dir.c_str(), n.c_str());
  std::printf("%zu carried tensors (%llu bytes) of %s compared with %s\n", want.size(),
              static_cast<unsigned long long>(bytes), in_dir.c_str(), out_dir.c_str());
  return problems == 0 && !want.empty() ? 0 : 1;
}

int checkpoint_carried(const std::string& in_dir, const std::string& ckpt) {
  const ShardedSafetensors in = ShardedSafetensors::open(in_dir);
  dg::CheckpointReader r = dg::CheckpointReader::open(ckpt);
  const std::vector<std::string> want = carried_names(in);
  std::set<std::string> keys;
  for (const auto& [key, t] : r.manifest().tensors)
    if (key.rfind("carried/", 0) == 0) keys.insert(key);
  for (const std::string& n : want) {
    const std::string key = dg::checkpoint_key("carried", n);
    if (!keys.erase(key)) {
      problem("%s: no %s", r.dir().c_str(), key.c_str());
      continue;
    }
    const dg::CheckpointTensor& t = r.tensor(key);
    const dg::SafetensorsEntry& e = in.entry(n);
    const auto src = in.bytes(n);
    if (!e.type || *e.type != t.dtype || e.shape != t.shape) {
      problem("%s: %s is %s %s, the input's %s %s", r.dir().c_str(), key.c_str(), std::string(dg::dtype_name(t.dtype)).c_str(),
              shape_of(t.shape).c_str(), e.dtype.c_str(), shape_of(e.shape).c_str());
      continue;
    }
    const dg::Tensor got = r.read(key, dg::Slice::whole(t.shape));
    if (got.nbytes() != src.size() || !same_bytes(got.raw(), src.data(), src.size()))
      problem("%s: %s differs from the input's bytes", r.dir().c_str(), key.c_str());
  }
  for (const std::string& k : keys) problem("%s: unexpected %s", r.dir().c_str(), k.c_str());
  std::printf("%zu carried tensors of %s compared with checkpoint %s\n", want.size(), in_dir.c_str(), r.dir().c_str());
  return problems == 0 && !want.empty() ? 0 : 1;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 4) {
    std::fprintf(stderr, "usage: tensor_check expect DIR EXPECTED.json | carried-equal IN OUT | checkpoint-carried IN CKPT\n");
    return 2;
  }
  const std::string mode = argv[1];
  try {
    int rc = 2;
    if (mode == "expect") rc = expect(argv[2], argv[3]);
    else if (mode == "carried-equal") rc = carried_equal(argv[2], argv[3]);
    else if (mode == "checkpoint-carried") rc = checkpoint_carried(argv[2], argv[3]);
    else std::fprintf(stderr, "tensor_check: unknown mode %s\n", mode.c_str());
    if (problems > 40) std::printf("... %d problems in all\n", problems);
    if (rc == 0) std::printf("OK\n");
    return rc;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "tensor_check: %s\n", e.what());
    return 2;
  }
}
