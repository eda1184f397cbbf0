// Block-diffusion generation on the HF fixture model: the sampler rule, determinism, independence from
// batch mates, canvas rounding, EOS handling, stopping, metrics and option validation.
#include <doctest/doctest.h>

#include <algorithm>
#include <cstring>
#include <fstream>

#include <nlohmann/json.hpp>

#include "jobs/model_load.h"
#include "layers/generation.h"

using namespace dg;

namespace {
const HfModel& model() {
  static const HfModel m = load_hf_model(std::string(DGEMMA_FIXTURES) + "/model/tiny6");
  return m;
}
GenerationConfig quick() {
  GenerationConfig g;
  g.max_new_tokens = 8;
  g.max_denoising_steps = 6;
  g.seed = 11;
  return g;
}
}  // namespace

TEST_CASE("entropy-bound acceptance: the spec's worked example and the always-accepted minimum") {
  const float h[] = {0.3f, 0.001f, 0.08f, 0.02f, 0.05f};  // sorted: 0.001 0.02 0.05 0.08 0.3
  const std::vector<bool> a = entropy_bound_accept(h, 5, 0.1);
  CHECK(a == std::vector<bool>{false, true, true, true, true});
  const float big[] = {5.f, 3.f, 4.f};
  CHECK(entropy_bound_accept(big, 3, 0.1) == std::vector<bool>{false, true, false});
}

TEST_CASE("generation is deterministic and a request's result does not depend on its batch mates") {
  const HfModel& m = model();
  const GenerationRequest a{{2, 10, 11, 12, 13, 14, 15}, 7, -1};
  const GenerationRequest b{{2, 20, 21}, 8, -1};
  const auto alone = generate(m.config, m.weights, {a}, quick());
  const auto again = generate(m.config, m.weights, {a}, quick());
  const auto batch = generate(m.config, m.weights, {b, a}, quick());
  REQUIRE(alone.size() == 1);
  REQUIRE(batch.size() == 2);
  CHECK(alone[0].tokens == again[0].tokens);
  CHECK(alone[0].tokens == batch[1].tokens);
  CHECK(alone[0].denoising_steps == batch[1].denoising_steps);
  const auto other_seed = [&] {
    GenerationConfig g = quick();
    g.seed = 12;
    return generate(m.config, m.weights, {a}, g);
  }();
  CHECK(other_seed[0].tokens != alone[0].tokens);  // the seed matters
}

TEST_CASE("max_new_tokens rounds up to whole canvases; metrics are consistent") {
  const HfModel& m = model();
  GenerationConfig g = quick();
  g.eos_token_ids = {-1};  // never stop on EOS
  g.max_new_tokens = 5;    // canvas 4 -> 2 canvases, 8 tokens
  const auto r = generate(m.config, m.weights, {GenerationRequest{{2, 30, 31}, 0, -1}, GenerationRequest{{2, 40}, 1, 3}}, g);
  CHECK(r[0].canvases == 2);
  CHECK(r[0].tokens.size() == 8);
  CHECK(r[0].finish_reason == "length");
  CHECK(r[1].canvases == 1);  // per-request override: 3 tokens -> one canvas
  CHECK(r[1].tokens.size() == 4);
  for (const auto& x : r) {
    CHECK(x.denoising_steps >= 2 * x.canvases);  // stability 1: at least two steps per canvas
    CHECK(x.denoising_steps <= x.canvases * g.max_denoising_steps);
    CHECK(x.tokens_per_forward == doctest::Approx(double(x.completion_tokens) / double(x.denoising_steps)));
    for (std::int32_t t : x.tokens) CHECK((t >= 0 && t < m.config.vocab_size));
  }
}

TEST_CASE("an EOS ends the request at its first occurrence") {
  const HfModel& m = model();
  GenerationConfig g = quick();
  g.eos_token_ids.clear();
  for (int v = 0; v < m.config.vocab_size; ++v) g.eos_token_ids.push_back(v);  // every token is an EOS
  const auto r = generate(m.config, m.weights, {GenerationRequest{{2, 50, 51}, 3, -1}}, g);
  CHECK(r[0].finish_reason == "stop");
  CHECK(r[0].tokens.size() == 1);
  CHECK(r[0].canvases == 1);
}

TEST_CASE("stable-and-confident stopping: threshold 0 and a huge confidence bound stop after one step") {
  const HfModel& m = model();
  GenerationConfig g = quick();
  g.eos_token_ids = {-1};
  g.stability_threshold = 0;
  g.confidence_threshold = 1e9;
  const auto r = generate(m.config, m.weights, {GenerationRequest{{2, 60}, 4, -1}}, g);
  CHECK(r[0].canvases == 2);
  CHECK(r[0].denoising_steps == 2);
  g.stability_threshold = 1;  // the first step of a canvas can never be stable: at least two steps
  const auto r1 = generate(m.config, m.weights, {GenerationRequest{{2, 60}, 4, -1}}, g);
  CHECK(r1[0].denoising_steps >= 4);
}

TEST_CASE("generation options are validated") {
  const HfModel& m = model();
  GenerationConfig g = quick();
  g.t_min = 0.9;
  CHECK_THROWS_WITH_AS(generate(m.config, m.weights, {GenerationRequest{{2}, 0, -1}}, g), doctest::Contains("t_max"),
                       ConfigError);
  g = quick();
  g.entropy_bound = 0;
  CHECK_THROWS_AS(generate(m.config, m.weights, {GenerationRequest{{2}, 0, -1}}, g), ConfigError);
  CHECK_THROWS_WITH_AS(generate(m.config, m.weights, {GenerationRequest{{}, 5, -1}}, quick()),
                       doctest::Contains("empty prompt"), ConfigError);
}

// The reference's defaults and edge rules, recorded from Hugging Face's own code by
// scripts/fixtures/make_generation_rules.py (tests/fixtures/generation_rules/rules.json).
namespace {
nlohmann::json rules() {
  std::ifstream in(std::string(DGEMMA_FIXTURES) + "/generation_rules/rules.json");
  REQUIRE(in.good());
  return nlohmann::json::parse(in);
}
float from_bits(std::uint32_t b) {
  float f;
  std::memcpy(&f, &b, sizeof f);
  return f;
}
}  // namespace

TEST_CASE("defaults: a model without generation_config.json gets the reference's sampling defaults") {
  const nlohmann::json d = rules()["defaults_without_generation_config"];
  const GenerationConfig g;
  CHECK(g.max_new_tokens == d["max_new_tokens"].get<int>());
  CHECK(d["max_length"].is_null());
  CHECK(g.max_length == 0);  // unset
  CHECK(g.max_denoising_steps == d["max_denoising_steps"].get<int>());
  CHECK(g.entropy_bound == d["entropy_bound"].get<double>());
  CHECK(g.t_min == d["t_min"].get<double>());
  CHECK(g.t_max == d["t_max"].get<double>());
  CHECK(g.stability_threshold == d["stability_threshold"].get<int>());
  CHECK(g.confidence_threshold == d["confidence_threshold"].get<double>());
  // The reference takes no EOS set from config.json (it has one): generate warns and stops on no EOS
  // (tests/cli/test_generate.sh checks the job side).
  CHECK(d["eos_token_id"].is_null());
  CHECK_FALSE(d["config_json_eos_token_id"].is_null());
  // No pad token either (config.json's text_config.pad_token_id is not used): unset, every token counts.
  CHECK(d["pad_token_id"].is_null());
  CHECK(g.pad_token_id == -1);
}

TEST_CASE("pad_token_id: unset counts every generated token, set excludes that id from the count") {
  const HfModel& m = model();
  GenerationConfig g = quick();
  g.max_new_tokens = 96;  // enough tokens of a 96-id vocabulary for id 0 to turn up
  g.eos_token_ids.clear();
  const GenerationRequest r{{2, 10, 11}, 3, -1};
  const auto unset = generate(m.config, m.weights, {r}, g);
  g.pad_token_id = 0;
  const auto zero = generate(m.config, m.weights, {r}, g);
  REQUIRE(unset[0].tokens == zero[0].tokens);  // the pad id changes the count, not the tokens
  const auto zeros = std::count(zero[0].tokens.begin(), zero[0].tokens.end(), 0);
  CHECK(unset[0].completion_tokens == static_cast<std::int64_t>(unset[0].tokens.size()));
  CHECK(zero[0].completion_tokens == static_cast<std::int64_t>(zero[0].tokens.size()) - zeros);
  g.pad_token_id = -2;
  CHECK_THROWS_WITH_AS(generate(m.config, m.weights, {r}, g), doctest::Contains("pad_token_id"), ConfigError);
}

TEST_CASE("max_length: the reference's rule for the tokens a request may generate") {
  for (const nlohmann::json& c : rules()["generated_length"]) {
    CAPTURE(c.dump());
    GenerationConfig g;
    g.max_length = c[0].is_null() ? 0 : c[0].get<int>();
    g.max_new_tokens = c[1].get<int>();
    GenerationRequest r;
    r.prompt.assign(c[2].get<std::size_t>(), 5);
    CHECK(request_max_new_tokens(g, r) == c[3].get<int>());
  }
  GenerationConfig g;
  g.max_length = 100;
  GenerationRequest r;
  r.prompt.assign(10, 5);
  r.max_new_tokens = 256;  // a request asking for exactly 256 falls under the rule too, as in the reference
  CHECK(request_max_new_tokens(g, r) == 90);
  r.max_new_tokens = 17;
  CHECK(request_max_new_tokens(g, r) == 17);
}

TEST_CASE("temperature schedule: logits / step_temperature are the reference's bits at every step") {
  const nlohmann::json t = rules()["temperature"];
  std::vector<float> logits;
  for (std::uint32_t b : t["logits_bits"]) logits.push_back(from_bits(b));
  int mismatches = 0, compared = 0;
  for (const nlohmann::json& c : t["cases"]) {
    GenerationConfig g;
    g.t_min = c["t_min"].get<double>();
    g.t_max = c["t_max"].get<double>();
    g.max_denoising_steps = c["n"].get<int>();
    const auto& steps = c["scaled_bits"];
    for (int s = g.max_denoising_steps, k = 0; s >= 1; --s, ++k) {
      const float temp = step_temperature(g, s);
      for (std::size_t i = 0; i < logits.size(); ++i, ++compared)
        mismatches += logits[i] / temp != from_bits(steps[static_cast<std::size_t>(k)][i].get<std::uint32_t>());
    }
  }
  CHECK(compared > 1000);
  CHECK(mismatches == 0);
}

TEST_CASE("no allocation in the steady-state denoising step: after a canvas's first step, the host pool serves all") {
  const HfModel& m = model();
  GenerationConfig g = quick();
  g.max_new_tokens = 12;  // 3 canvases of 4
  g.max_denoising_steps = 8;
  g.eos_token_ids.clear();
  g.stability_threshold = 0;  // keep every step running: no early stop
  g.confidence_threshold = 1e-9;
  std::vector<std::int64_t> at_step;  // the pool's system allocations after each step
  {
    ModelPathScope in_batch;  // as the generate job: tensors of the model path come from the host pool
    generate(m.config, m.weights, {GenerationRequest{{2, 10, 11, 12}, 0, -1}, GenerationRequest{{2, 20}, 1, -1}}, g,
             [&](std::int64_t) { at_step.push_back(allocation_stats().system_allocations); });
  }
  REQUIRE(at_step.size() == 24);
  std::string deltas;
  for (std::size_t i = 1; i < at_step.size(); ++i) deltas += std::to_string(at_step[i] - at_step[i - 1]) + " ";
  CAPTURE(deltas);
  // Within a canvas, every step after its first takes nothing from the system allocator (the first step
  // of a canvas re-encodes the committed canvas into a longer KV cache and may need blocks of new sizes),
  // except the very second step of the run, the first with a self-conditioning input.
  for (std::size_t i = 2; i < at_step.size(); ++i)
    if (i % 8 >= 1) CHECK(at_step[i] == at_step[i - 1]);
  MESSAGE("system allocations per denoising step: " << deltas);
}
