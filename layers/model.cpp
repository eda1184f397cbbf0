// Weights layout and the encode / decode forward passes (spec/model.md §3.4-§6).
#include "layers/model.h"

#include <algorithm>

#include "layers/layer.h"
#include "layers/ops.h"

namespace dg {

// ---- Weights ---------------------------------------------------------------------------------------

ModelWeights allocate_model(const ModelConfig& c) {
  const std::int64_t H = c.hidden_size, F = c.intermediate_size, E = c.num_experts, Fm = c.moe_intermediate_size;
  auto z = [](Shape s) { return Tensor::zeros(std::move(s), DType::F32); };
  ModelWeights w;
  w.embed_tokens = z({c.vocab_size, H});
  w.norm = z({H});
  w.sc_pre_norm = z({H});
  w.sc_gate_up = z({2 * F, H});
  w.sc_down = z({H, F});
  for (int i = 0; i < c.num_layers; ++i) {
    const LayerSpec& s = c.layer(i);
    const std::int64_t q = c.num_heads * s.head_dim, kv = s.num_kv_heads * s.head_dim;
    LayerWeights l;
    l.q_proj = z({q, H});
    l.k_proj = z({kv, H});
    if (s.has_v_proj) l.v_proj = z({kv, H});
    l.o_proj = z({H, q});
    l.q_norm = z({s.head_dim});
    l.k_norm = z({s.head_dim});
    for (Tensor* n : {&l.input_layernorm, &l.post_attention_layernorm, &l.pre_feedforward_layernorm,
                      &l.post_feedforward_layernorm_1, &l.pre_feedforward_layernorm_2, &l.post_feedforward_layernorm_2,
                      &l.post_feedforward_layernorm, &l.router_scale})
      *n = z({H});
    l.mlp_gate_up = z({2 * F, H});
    l.mlp_down = z({H, F});
    l.router_proj = z({E, H});
    l.router_per_expert_scale = z({E});
    l.experts_gate_up = z({E, H, 2 * Fm});
    l.experts_down = z({E, Fm, H});
    l.layer_scalar = z({1});
    l.encoder_layer_scalar = z({1});
    w.layers.push_back(std::move(l));
  }
  return w;
}

std::vector<ParamSpec> model_params(const ModelConfig& c) {
  const std::int64_t H = c.hidden_size, F = c.intermediate_size, E = c.num_experts, Fm = c.moe_intermediate_size;
  std::vector<ParamSpec> out;
  using Slot = std::function<Tensor&(ModelWeights&)>;
  // A whole member, or the rows [r0, r0 + shape[0]) of a member of shape slot_shape.
  auto add = [&](std::string name, Shape shape, Slot slot, Shape slot_shape, std::int64_t r0 = 0) {
    const std::int64_t row = shape_numel(slot_shape) / slot_shape[0];
    auto get = [slot, r0, n = shape[0], whole = shape == slot_shape](const ModelWeights& w) {
      Tensor& t = slot(const_cast<ModelWeights&>(w));
      return whole ? t : t.rows(r0, r0 + n);
    };
    out.push_back({std::move(name), std::move(shape), get, slot, std::move(slot_shape), r0 * row});
  };
  auto model = [&](std::string name, Shape shape, Tensor ModelWeights::*m, Shape slot_shape = {}, std::int64_t r0 = 0) {
    if (slot_shape.empty()) slot_shape = shape;
    add(std::move(name), std::move(shape), [m](ModelWeights& w) -> Tensor& { return w.*m; }, std::move(slot_shape), r0);
  };
  model("model.embed_tokens.weight", {c.vocab_size, H}, &ModelWeights::embed_tokens);
  model("model.norm.weight", {H}, &ModelWeights::norm);
  model("model.self_conditioning.pre_norm.weight", {H}, &ModelWeights::sc_pre_norm);
  model("model.self_conditioning.gate_proj.weight", {F, H}, &ModelWeights::sc_gate_up, {2 * F, H}, 0);
  model("model.self_conditioning.up_proj.weight", {F, H}, &ModelWeights::sc_gate_up, {2 * F, H}, F);
  model("model.self_conditioning.down_proj.weight", {H, F}, &ModelWeights::sc_down);
  for (int i = 0; i < c.num_layers; ++i) {
    const LayerSpec& s = c.layer(i);
    const std::int64_t q = c.num_heads * s.head_dim, kv = s.num_kv_heads * s.head_dim;
    const std::string p = fmt::format("model.layers.{}.", i);
    const auto L = static_cast<std::size_t>(i);
    auto layer = [&](std::string name, Shape shape, Tensor LayerWeights::*m, Shape slot_shape = {}, std::int64_t r0 = 0) {
      if (slot_shape.empty()) slot_shape = shape;
      add(p + name, std::move(shape), [L, m](ModelWeights& w) -> Tensor& { return w.layers[L].*m; },
          std::move(slot_shape), r0);
    };
    layer("self_attn.q_proj.weight", {q, H}, &LayerWeights::q_proj);
    layer("self_attn.k_proj.weight", {kv, H}, &LayerWeights::k_proj);
    if (s.has_v_proj) layer("self_attn.v_proj.weight", {kv, H}, &LayerWeights::v_proj);
    layer("self_attn.o_proj.weight", {H, q}, &LayerWeights::o_proj);
    layer("self_attn.q_norm.weight", {s.head_dim}, &LayerWeights::q_norm);
    layer("self_attn.k_norm.weight", {s.head_dim}, &LayerWeights::k_norm);
    layer("input_layernorm.weight", {H}, &LayerWeights::input_layernorm);
    layer("post_attention_layernorm.weight", {H}, &LayerWeights::post_attention_layernorm);
    layer("pre_feedforward_layernorm.weight", {H}, &LayerWeights::pre_feedforward_layernorm);
    layer("post_feedforward_layernorm.weight", {H}, &LayerWeights::post_feedforward_layernorm);
    layer("pre_feedforward_layernorm_2.weight", {H}, &LayerWeights::pre_feedforward_layernorm_2);
    layer("post_feedforward_layernorm_1.weight", {H}, &LayerWeights::post_feedforward_layernorm_1);
    layer("post_feedforward_layernorm_2.weight", {H}, &LayerWeights::post_feedforward_layernorm_2);
    layer("mlp.gate_proj.weight", {F, H}, &LayerWeights::mlp_gate_up, {2 * F, H}, 0);
    layer("mlp.up_proj.weight", {F, H}, &LayerWeights::mlp_gate_up, {2 * F, H}, F);
    layer("mlp.down_proj.weight", {H, F}, &LayerWeights::mlp_down);
    layer("moe.gate.proj.weight", {E, H}, &LayerWeights::router_proj);
    layer("moe.gate.scale", {H}, &LayerWeights::router_scale);
    layer("moe.gate.per_expert_scale", {E}, &LayerWeights::router_per_expert_scale);
    layer("moe.experts.gate_and_up_projs", {E, H, 2 * Fm}, &LayerWeights::experts_gate_up);
    layer("moe.experts.down_projs", {E, Fm, H}, &LayerWeights::experts_down);
    layer("layer_scalar", {1}, &LayerWeights::layer_scalar);
    layer("encoder_layer_scalar", {1}, &LayerWeights::encoder_layer_scalar);
  }
  return out;
}

std::vector<NamedTensor> model_tensors(const ModelConfig& c, const ModelWeights& w) {
  std::vector<NamedTensor> out;
  for (const ParamSpec& p : model_params(c)) {
    Tensor t = p.get(w);
    DG_CHECK(t.shape() == p.shape, "{}: allocated {} but the config implies {}", p.name, t.describe(), shape_str(p.shape));
    out.push_back({p.name, std::move(t)});
  }
  return out;
}

// ---- Pieces of one layer -----------------------------------------------------------------------------

namespace {

using layer::f32;

Tensor norm(const Tensor& x, const Tensor* weight, float eps) {
  Tensor rstd;
  return layer::norm(x, weight, eps, rstd);
}

// [B, T0, n, d] ++ [B, T1, n, d] along the sequence, keeping only the last `keep` tokens (keep < 0: all):
// the KV-cache append, on the device (concat_tokens).
Tensor concat_seq(const Tensor& a, const Tensor& b, std::int64_t keep) {
  const std::int64_t T0 = a.defined() && a.numel() ? a.size(1) : 0, T1 = b.size(1);
  const std::int64_t total = T0 + T1, kept = keep < 0 ? total : std::min(total, keep);
  Shape s = b.shape();
  s[1] = kept;
  Tensor out = Tensor::empty(s, b.dtype(), b.device());
  concat_tokens(a, b, out);
  return out;
}


// One layer of a generation pass (layer::layer_forward, nothing kept for a backward): x [B,S,H] is
// replaced by the layer's output; returns the layer's own K/V [B,S,nkv,hd] for the cache.
struct AttnIO {
  Tensor k, v;
};
AttnIO run_layer(const ModelConfig& c, int li, const LayerWeights& l, Tensor& x, const RopeTables& rt,
                 const Tensor& cache_k, const Tensor& cache_v, const AttnOpts& opts, const Tensor& scalar) {
  layer::LayerSaved scratch;
  layer::layer_forward(c, li, l, x, rt, cache_k, cache_v, opts, Tensor(), scalar, scratch);
  return {scratch.k, scratch.v};
}

// Positions [B·S] of S new tokens after the cache's, shifted per row by cache.row_offset (on the device).
Tensor positions_for(std::int64_t B, std::int64_t S, const KVCache& cache, Device device) {
  const bool shifted = cache.row_offset.defined() && cache.row_offset.numel() > 0;
  DG_CHECK(!shifted || cache.row_offset.numel() == B, "row_offset {} for batch {}", cache.row_offset.describe(), B);
  Tensor p = Tensor::empty({B, S}, DType::I32, device);
  token_positions(cache.row_offset, cache.length, p);
  return p.reshape({B * S});
}

Tensor ones_i32(Shape s, Device device) {
  Tensor t = Tensor::empty(std::move(s), DType::I32, device);
  fill_(t, 1);
  return t;
}

// Key validity [B, T_cache + S] for one attention call.
Tensor keys_valid(const Tensor& cache_valid, const Tensor& own_valid) {
  return concat_seq(cache_valid.reshape({cache_valid.size(0), cache_valid.size(1), 1}),
                    own_valid.reshape({own_valid.size(0), own_valid.size(1), 1}), -1)
      .reshape({own_valid.size(0), -1});
}

// The ids' dtype and shape; their values too when they are host memory (a device-resident or device
// tensor is not read back: the embedding op checks every id it looks up and names a bad one).
void check_ids(const ModelConfig& c, const Tensor& ids, const char* what) {
  DG_CHECK(ids.dtype() == DType::I32 && ids.ndim() == 2, "{} must be i32 [B, S], got {}", what, ids.describe());
  if (!ids.is_cpu() || ids.device_resident()) return;
  for (std::int64_t i = 0; i < ids.numel(); ++i) {
    const std::int32_t id = ids.data<std::int32_t>()[i];
    if (id < 0 || id >= c.vocab_size)
      fail("{}: token id {} at row {}, position {} is outside the vocabulary [0, {})", what, id, i / ids.size(1),
           i % ids.size(1), c.vocab_size);
  }
}

}  // namespace

RopeTables rope_tables(const LayerSpec& s, const Tensor& positions) {
  RopeParams p;
  p.type = s.rope.kind == RopeSpec::Kind::Default ? RopeType::Default : RopeType::Proportional;
  p.head_dim = s.head_dim;
  p.theta = s.rope.theta;
  p.partial_rotary_factor = s.rope.kind == RopeSpec::Kind::Default ? 1.0 : s.rope.partial_rotary_factor;
  Tensor inv = Tensor::empty({s.head_dim / 2}, DType::F32);
  rope_inv_freq(p, inv);
  const Shape table{positions.numel(), s.head_dim / 2};
  RopeTables t{Tensor::empty(table, DType::F32), Tensor::empty(table, DType::F32)};
  rope_table(positions, inv, t.cos, t.sin);
  return t;
}

// ---- encode / decode / logits ------------------------------------------------------------------------

EncodeOut encode(const ModelConfig& c, const ModelWeights& w, const Tensor& ids, const Tensor& valid, KVCache& cache,
                 bool keep_layer_hidden) {
  check_ids(c, ids, "encode");
  const std::int64_t B = ids.size(0), S = ids.size(1), H = c.hidden_size;
  if (cache.layers.empty()) {
    cache.layers.resize(static_cast<std::size_t>(c.num_layers));
    cache.batch = B;
  }
  DG_CHECK(cache.batch == B, "encode: batch {} does not match the cache's {}", B, cache.batch);
  const Tensor own_valid = valid.defined() && valid.numel() ? valid : ones_i32({B, S}, ids.device());
  DG_CHECK(own_valid.shape() == ids.shape(), "encode: valid {} vs ids {}", own_valid.describe(), ids.describe());

  Tensor x = f32({B, S, H});
  embedding(ids, w.embed_tokens, embed_scale(H, w.embed_tokens.dtype()), x);
  const Tensor pos = positions_for(B, S, cache, ids.device());
  RopeTables rope_sliding, rope_full;
  EncodeOut out;
  for (int i = 0; i < c.num_layers; ++i) {
    const LayerSpec& s = c.layer(i);
    RopeTables& rt = s.type == LayerType::Full ? rope_full : rope_sliding;
    if (!rt.cos.defined() || rt.cos.numel() == 0) rt = rope_tables(s, pos);
    LayerKV& kv = cache.layers[static_cast<std::size_t>(i)];
    AttnOpts opts;
    opts.mask = {AttnMaskKind::Causal, s.window, 0};
    const bool has_cache = kv.k.defined() && kv.k.numel() > 0;
    opts.key_valid = keys_valid(has_cache ? kv.valid : Tensor::empty({B, 0}, DType::I32, ids.device()), own_valid);
    const AttnIO io = run_layer(c, i, w.layers[static_cast<std::size_t>(i)], x, rt, has_cache ? kv.k : Tensor(),
                                    has_cache ? kv.v : Tensor(), opts,
                                    w.layers[static_cast<std::size_t>(i)].encoder_layer_scalar);
    const std::int64_t keep = s.window > 0 ? s.window - 1 : -1;  // sliding layers keep the last W-1 tokens
    kv.k = concat_seq(has_cache ? kv.k : Tensor(), io.k, keep);
    kv.v = concat_seq(has_cache ? kv.v : Tensor(), io.v, keep);
    kv.valid = concat_seq(has_cache ? kv.valid.reshape({B, kv.valid.size(1), 1}) : Tensor(),
                          own_valid.reshape({B, S, 1}), keep)
                   .reshape({B, -1});
    if (keep_layer_hidden) out.layer_hidden.push_back(x.clone());
  }
  cache.length += S;
  out.hidden = norm(x.reshape({B * S, H}), &w.norm, static_cast<float>(c.rms_norm_eps)).reshape({B, S, H});
  return out;
}

Tensor decode(const ModelConfig& c, const ModelWeights& w, const Tensor& canvas, const Tensor& sc_logits,
              const KVCache& cache) {
  if (!sc_logits.defined() || sc_logits.numel() == 0) return decode_soft(c, w, canvas, Tensor(), cache);
  const std::int64_t B = canvas.size(0), C = canvas.size(1), H = c.hidden_size;
  DG_CHECK(sc_logits.shape() == (Shape{B, C, c.vocab_size}), "decode: sc_logits {} should be [{}, {}, {}]",
           sc_logits.describe(), B, C, c.vocab_size);
  Tensor soft = f32({B * C, H}), lse = f32({B * C});
  soft_embedding(sc_logits.reshape({B * C, c.vocab_size}), w.embed_tokens, embed_scale(H, w.embed_tokens.dtype()),
                 soft, lse);
  return decode_soft(c, w, canvas, soft.reshape({B, C, H}), cache);
}

Tensor decode_soft(const ModelConfig& c, const ModelWeights& w, const Tensor& canvas, const Tensor& sc_soft,
                   const KVCache& cache) {
  check_ids(c, canvas, "decode");
  const std::int64_t B = canvas.size(0), C = canvas.size(1), H = c.hidden_size, T = B * C;
  DG_CHECK(cache.layers.size() == static_cast<std::size_t>(c.num_layers) && cache.batch == B,
           "decode needs a cache of batch {} filled by encode", B);
  const float eps = static_cast<float>(c.rms_norm_eps), scale = embed_scale(H, w.embed_tokens.dtype());

  // Decoder input with self-conditioning (model.md §4.2): x0 = norm(emb(c) + sc_mlp(pre_norm(soft))).
  Tensor e = f32({T, H});
  embedding(canvas.reshape({T}), w.embed_tokens, scale, e);
  if (sc_soft.defined() && sc_soft.numel() > 0) {
    DG_CHECK(sc_soft.shape() == (Shape{B, C, H}), "decode: soft embedding {} should be [{}, {}, {}]",
             sc_soft.describe(), B, C, H);
    add_(e, layer::mlp(norm(sc_soft.reshape({T, H}), &w.sc_pre_norm, eps), w.sc_gate_up, w.sc_down));
  }
  Tensor x = norm(e, nullptr, eps).reshape({B, C, H});

  const Tensor pos = positions_for(B, C, cache, canvas.device());
  RopeTables rope_sliding, rope_full;
  const Tensor canvas_valid = ones_i32({B, C}, canvas.device());
  for (int i = 0; i < c.num_layers; ++i) {
    const LayerSpec& s = c.layer(i);
    RopeTables& rt = s.type == LayerType::Full ? rope_full : rope_sliding;
    if (!rt.cos.defined() || rt.cos.numel() == 0) rt = rope_tables(s, pos);
    const LayerKV& kv = cache.layers[static_cast<std::size_t>(i)];
    AttnOpts opts;
    opts.mask = {AttnMaskKind::Generation, s.window, 0};
    opts.key_valid = keys_valid(kv.valid, canvas_valid);
    run_layer(c, i, w.layers[static_cast<std::size_t>(i)], x, rt, kv.k, kv.v, opts,
                  w.layers[static_cast<std::size_t>(i)].layer_scalar);
  }
  return norm(x.reshape({T, H}), &w.norm, eps).reshape({B, C, H});
}

Tensor logits(const ModelConfig& c, const ModelWeights& w, const Tensor& hidden) {
  const std::int64_t H = c.hidden_size, T = hidden.numel() / H;
  Tensor out = f32({T, c.vocab_size});
  gemm(hidden.reshape({T, H}), w.embed_tokens, out, {.trans_b = true});
  softcap(out, static_cast<float>(c.final_logit_softcapping), out);
  Shape s(hidden.shape().begin(), hidden.shape().end() - 1);
  s.push_back(c.vocab_size);
  return out.reshape(s);
}

}  // namespace dg
