// Step-by-step replay of Hugging Face's own DiffusionGemma generate (tests/fixtures/generation_replay,
// made by scripts/fixtures/make_generation_replay.py: HF's generate unchanged, its random draws routed
// through a Python port of layers/random.h). For every denoising step and every row that took part, the
// canvas fed to the decoder, the argmax, the categorical sample, the accept mask and the stop decision
// must be identical, and the entropies close; the generated sequences (pads after EOS included) must be
// identical. The cases: prompts of different lengths in one left-padded batch, several canvases, EOS in
// some rows while others go on, the stable-and-confident stop firing at different steps for different
// rows (stability thresholds 1 and 2), the random fixture models at HF's default temperatures.
//
// Why these cases and not long trajectories on large models: a trajectory is a chain of discrete
// decisions (argmax, inverse-CDF sample, entropy-bound cut, confidence threshold). Two correct fp32
// implementations differ in the last bits of the logits (sum orders), and on a model with large logits
// (or at low temperature, which scales them up) a decision can sit within that difference of its
// boundary; from there the trajectories part for good, legitimately (HF in fp32 and in fp64 part the
// same way). The fixture script measures every decision's margin and keeps only cases where each is far
// above fp32 noise (it writes the smallest margins into the fixture; checked below).
#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <fstream>
#include <set>

#include <nlohmann/json.hpp>

#include "jobs/model_load.h"
#include "layers/generation.h"
#include "layers/random.h"

using namespace dg;
using nlohmann::json;

namespace {

const json& fixture() {
  static const json j = [] {
    std::ifstream in(std::string(DGEMMA_FIXTURES) + "/generation_replay/replay.json");
    REQUIRE(in.good());
    return json::parse(in);
  }();
  return j;
}

GenerationConfig config_of(const json& c) {
  const json& g = c["generation"];
  GenerationConfig cfg;
  cfg.max_new_tokens = g["max_new_tokens"];
  cfg.max_denoising_steps = g["max_denoising_steps"];
  cfg.t_min = g["t_min"];
  cfg.t_max = g["t_max"];
  cfg.stability_threshold = g["stability_threshold"];
  cfg.confidence_threshold = g["confidence_threshold"];
  cfg.entropy_bound = g["entropy_bound"];
  cfg.eos_token_ids = g["eos_token_id"].get<std::vector<int>>();
  cfg.pad_token_id = g["pad_token_id"];
  cfg.seed = c["seed"];
  cfg.vocab_chunk = 40;  // several vocabulary chunks (V = 96): the chunked statistics must not matter
  return cfg;
}

// Entropy tolerance, per step: 2e-5 + 10 x the gap between HF's own fp32 and fp64 runs of the case at
// that step (the fixture's fp64_entropy_gap, largest over the rows that took part). At a canvas's first
// step the gap is fp32 rounding of one forward (~1e-6); afterwards rounding differences compound through
// self-conditioning (the next step's input is softmax of these logits) and grow to ~1e-3 by the end of
// a canvas in HF's fp32-vs-fp64 comparison as in ours-vs-HF. Two fp32 implementations differ by about
// that gap; 10x leaves room for the spread, 2e-5 for the first steps.
double entropy_tolerance(const json& step) { return 2e-5 + 10.0 * step["fp64_entropy_gap"].get<double>(); }

}  // namespace

TEST_CASE("replay: the Python port of the generator draws what layers/random.h draws") {
  for (const json& r : fixture()["rng"]) {
    const std::uint64_t k = rng::key(r["seed"].get<std::uint64_t>(), static_cast<rng::Purpose>(r["purpose"].get<int>()),
                                     r["step"], r["sample"], r["position"]);
    CHECK(k == r["key"].get<std::uint64_t>());
    CHECK(rng::below(k, 96) == r["below_96"].get<std::uint32_t>());
    CHECK(rng::below(k, 262144) == r["below_262144"].get<std::uint32_t>());
    CHECK(rng::uniform(k) == r["uniform"].get<float>());
  }
}

TEST_CASE("replay: every step of HF's generate, reproduced") {
  for (const json& c : fixture()["cases"]) {
    const std::string name = c["name"];
    CAPTURE(name);
    // The fixture kept only cases whose decisions are far from their boundaries (see the header).
    for (const auto& [what, margin] : c["margins"].items()) {
      CAPTURE(what);
      CHECK(margin.get<double>() > (what == "sample" ? 1e-5 : 1e-4));
    }
    const HfModel m = load_hf_model(std::string(DGEMMA_FIXTURES) + "/model/" + c["model"].get<std::string>());
    const std::int64_t C = m.config.canvas_length;
    std::vector<GenerationRequest> reqs;
    for (const json& p : c["prompts"]) {
      GenerationRequest r;
      r.prompt = p.get<std::vector<std::int32_t>>();
      r.sample_index = reqs.size();  // the row index: what the fixture's draws are keyed by
      reqs.push_back(std::move(r));
    }
    std::vector<DenoisingStepTrace> ours;
    const auto results = generate(m.config, m.weights, reqs, config_of(c), nullptr,
                                  [&](const DenoisingStepTrace& s) { ours.push_back(s); });

    // HF keeps stepping while a row finished by EOS has not stopped denoising; those steps have no row
    // that takes part and are not ours to match.
    std::vector<const json*> theirs;
    for (const json& s : c["steps"]) {
      bool any = false;
      for (const json& a : s["active"]) any = any || a.get<bool>();
      if (any) theirs.push_back(&s);
    }
    REQUIRE(ours.size() == theirs.size());
    double worst_entropy = 0, worst_ratio = 0;  // largest |ours - HF| and largest |ours - HF| / HF's fp32-fp64 gap
    int decisions = 0;
    for (std::size_t i = 0; i < ours.size(); ++i) {
      const DenoisingStepTrace& o = ours[i];
      const json& t = *theirs[i];
      CAPTURE(o.canvas);
      CAPTURE(o.remaining);
      REQUIRE(o.canvas == t["canvas"].get<int>());
      REQUIRE(o.remaining == t["remaining"].get<std::int64_t>());
      for (std::size_t b = 0; b < reqs.size(); ++b) {
        CAPTURE(b);
        REQUIRE(o.active[b] == t["active"][b].get<bool>());
        if (!o.active[b]) continue;
        for (std::int64_t j = 0; j < C; ++j) {
          CAPTURE(j);
          const std::size_t at = b * static_cast<std::size_t>(C) + static_cast<std::size_t>(j);
          CHECK(o.x[at] == t["x"][b][j].get<std::int32_t>());
          CHECK(o.argmax[at] == t["argmax"][b][j].get<std::int32_t>());
          CHECK(o.sampled[at] == t["sampled"][b][j].get<std::int32_t>());
          CHECK(o.accepted[at] == t["accepted"][b][j].get<std::int32_t>());
          const double e = t["entropy"][b][j];
          CHECK(std::abs(o.entropy[at] - e) <= entropy_tolerance(t));
          worst_entropy = std::max(worst_entropy, std::abs(o.entropy[at] - e));
          worst_ratio = std::max(worst_ratio, std::abs(o.entropy[at] - e) / std::max(1e-7, t["fp64_entropy_gap"].get<double>()));
          decisions += 4;
        }
        CHECK(o.stopped[b] == (t["stopped"][b].get<int>() != 0));
        ++decisions;
      }
    }
    MESSAGE(name << ": " << ours.size() << " steps, " << decisions << " decisions equal to HF's; largest entropy "
                 << "difference " << worst_entropy << " (" << worst_ratio << " x HF's own fp32/fp64 gap)");

    // The generated sequences as HF returns them: our tokens (through the first EOS), then pads.
    for (std::size_t b = 0; b < reqs.size(); ++b) {
      CAPTURE(b);
      const auto hf = c["sequences"][b].get<std::vector<std::int32_t>>();
      const GenerationResult& r = results[b];
      REQUIRE(r.tokens.size() <= hf.size());
      CHECK(std::equal(r.tokens.begin(), r.tokens.end(), hf.begin()));
      for (std::size_t k = r.tokens.size(); k < hf.size(); ++k) CHECK(hf[k] == c["generation"]["pad_token_id"].get<int>());
      const auto eos_ids = c["generation"]["eos_token_id"].get<std::vector<int>>();
      const bool eos = !r.tokens.empty() && std::count(eos_ids.begin(), eos_ids.end(), r.tokens.back()) > 0;
      CHECK(r.finish_reason == (eos ? "stop" : "length"));
    }
  }
}

TEST_CASE("replay: the fixture exercises what it claims") {
  int stops_rows = 0, eos_rows = 0, continuing_rows = 0;
  bool stop_steps_differ = false;
  for (const json& c : fixture()["cases"]) {
    const auto eos = c["generation"]["eos_token_id"].get<std::vector<int>>();
    std::set<std::pair<int, int>> stop_at;  // (canvas, remaining) of every stop decision
    for (const json& s : c["steps"])
      for (std::size_t b = 0; b < s["active"].size(); ++b)
        if (s["active"][b].get<bool>() && s["stopped"][b].get<int>()) {
          ++stops_rows;
          stop_at.insert({s["canvas"].get<int>(), s["remaining"].get<int>()});
        }
    stop_steps_differ = stop_steps_differ || stop_at.size() > 1;
    for (const json& row : c["sequences"]) {
      bool has_eos = false;
      for (const json& t : row) has_eos = has_eos || std::count(eos.begin(), eos.end(), t.get<int>()) > 0;
      (has_eos ? eos_rows : continuing_rows)++;
    }
  }
  CHECK(stops_rows >= 4);     // the stable-and-confident stop fires ...
  CHECK(stop_steps_differ);   // ... at different steps for different rows
  CHECK(eos_rows >= 2);       // EOS ends some rows ...
  CHECK(continuing_rows >= 2);  // ... while others go on
}
