// Parity of the CPU forward pass with the Hugging Face reference (transformers 5.23.0, fp32, eager
// attention), on the committed fixtures of scripts/fixtures/make_model_fixtures.py. The models are
// loaded from their HF directories by the loader users run (io/hf_model.h).
//
// Tolerance, as max |ours - HF| / max |HF| per tensor: 1e-5 for logits, 5e-5 for hidden states and
// caches. Both sides compute in fp32 with different summation orders (OpenBLAS vs PyTorch GEMMs, the
// norms, the attention softmax). Measured: logits <= 5.1e-6; hidden states and K/V grow from ~1e-6 at
// layer 0 to 2.4e-5 at the last encoder layer of tiny6_scalars, whose encoder scalars (0.3 ... 0.8)
// shrink the stream by ~50x, so fp32 rounding is large relative to the final magnitude. An error in
// any formula (a missed norm weight, a wrong RoPE pair, a wrong mask column, a swapped scalar) gives
// >= 1e-2.
#include <doctest/doctest.h>

#include "jobs/model_load.h"
#include "io/safetensors.h"
#include "layers/model.h"
#include "tests/op_test_util.h"

using namespace dg;

namespace {

constexpr double kLogitsTol = 1e-5, kStateTol = 5e-5;

struct Fixture {
  HfModel model;
  SafetensorsFile ref;
  Tensor get(const std::string& name) const { return ref.tensor(name).clone(); }
};

Fixture load(const std::string& name) {
  const std::string dir = std::string(DGEMMA_FIXTURES) + "/model/" + name;
  return {load_hf_model(dir), SafetensorsFile::open(dir + "/reference.safetensors")};
}

// HF caches are [B, Kv, T, hd]; ours [B, T, Kv, hd].
Tensor to_token_major(const Tensor& hf) {
  const std::int64_t B = hf.size(0), K = hf.size(1), T = hf.size(2), D = hf.size(3);
  Tensor out = Tensor::empty({B, T, K, D}, DType::F32);
  for (std::int64_t b = 0; b < B; ++b)
    for (std::int64_t k = 0; k < K; ++k)
      for (std::int64_t t = 0; t < T; ++t)
        for (std::int64_t d = 0; d < D; ++d)
          out.data<float>()[((b * T + t) * K + k) * D + d] = hf.data<float>()[((b * K + k) * T + t) * D + d];
  return out;
}

void check_close(const Tensor& ours, const Tensor& ref, const std::string& what) {
  CAPTURE(what);
  REQUIRE(ours.numel() == ref.numel());
  const double rel = test::max_rel_diff(ours, ref);
  CAPTURE(rel);
  CHECK(rel <= (what.rfind("logits", 0) == 0 ? kLogitsTol : kStateTol));
}

void check_model(const std::string& name) {
  CAPTURE(name);
  const Fixture f = load(name);
  const ModelConfig& c = f.model.config;
  const ModelWeights& w = f.model.weights;
  const Tensor prompt = f.get("prompt_ids"), canvas = f.get("canvas_ids"), canvas2 = f.get("canvas2_ids");

  SUBCASE("encoder: every layer's hidden states, the cache, the final hidden state") {
    KVCache cache;
    const EncodeOut e = encode(c, w, prompt, Tensor(), cache, /*keep_layer_hidden=*/true);
    for (int i = 0; i < c.num_layers; ++i) {
      check_close(e.layer_hidden[static_cast<std::size_t>(i)], f.get(fmt::format("enc.hidden.{}", i)),
                  fmt::format("enc.hidden.{}", i));
      const Tensor hk = f.get(fmt::format("enc.k.{}", i)), hv = f.get(fmt::format("enc.v.{}", i));
      // sliding layers keep W-1 = 5 of the 10 prompt tokens, full layers all 10
      CHECK(cache.layers[static_cast<std::size_t>(i)].k.size(1) == hk.size(2));
      check_close(cache.layers[static_cast<std::size_t>(i)].k, to_token_major(hk), fmt::format("enc.k.{}", i));
      check_close(cache.layers[static_cast<std::size_t>(i)].v, to_token_major(hv), fmt::format("enc.v.{}", i));
    }
    check_close(e.hidden, f.get("enc.last_hidden"), "enc.last_hidden");
  }
  SUBCASE("decoder logits without and with self-conditioning") {
    KVCache cache;
    encode(c, w, prompt, Tensor(), cache);
    check_close(logits(c, w, decode(c, w, canvas, Tensor(), cache)), f.get("logits.plain"), "logits.plain");
    check_close(logits(c, w, decode(c, w, canvas, f.get("sc_logits"), cache)), f.get("logits.sc"), "logits.sc");
  }
  SUBCASE("decoder logits with a prompt and one committed canvas in the cache") {
    KVCache cache;
    encode(c, w, prompt, Tensor(), cache);
    encode(c, w, canvas, Tensor(), cache);
    CHECK(cache.length == prompt.size(1) + canvas.size(1));
    check_close(logits(c, w, decode(c, w, canvas2, Tensor(), cache)), f.get("logits.committed"), "logits.committed");
  }
  SUBCASE("decoder logits over a left-padded prompt") {
    KVCache cache;
    encode(c, w, f.get("pad_prompt_ids"), f.get("pad_mask"), cache);
    check_close(logits(c, w, decode(c, w, canvas, Tensor(), cache)), f.get("logits.padded"), "logits.padded");
  }
}

}  // namespace

TEST_CASE("HF parity: 6 layers, GQA per layer type, partial RoPE, MoE top-2, window < prompt, canvas < prompt") {
  check_model("tiny6");
}

TEST_CASE("HF parity: encoder and decoder layer scalars that differ and are far from 1") {
  check_model("tiny6_scalars");
}

TEST_CASE("the loader carries the vision tower and rejects wrong shapes and missing tensors") {
  const Fixture f = load("tiny6");
  CHECK(f.model.carried.size() == 16);  // 15 vision-tower tensors and the projector
  for (const std::string& n : f.model.carried) CHECK(n.rfind("model.encoder.", 0) == 0);
  CHECK_THROWS_WITH_AS(load_hf_model(std::string(DGEMMA_FIXTURES) + "/model/nowhere"),
                       doctest::Contains("model/nowhere"), ConfigError);
}
