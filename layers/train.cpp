// The SFT forward and backward of one micro-batch: encode, decode pass 1 (no grad), decode pass 2,
// the diffusion and AR losses, and the backward in reverse order (spec/training.md §1.4, §4, §5.1-§5.2,
// §6.1). The per-layer math is in layers/train_layer.cpp. See layers/train.h.
#include "layers/train.h"

#include <algorithm>
#include <cmath>

#include "layers/ops.h"
#include "layers/layer.h"

namespace dg {

using layer::f32;
using layer::LayerSaved;

ModelGrads allocate_grads(const ModelConfig& c) { return allocate_model(c); }  // zero-filled

void zero_grads(const ModelConfig& c, ModelGrads& g) {
  for (NamedTensor& t : model_tensors(c, g)) t.tensor.zero_();
}

SftBatch to_model_device(const SftBatch& b) {
  SftBatch d = b;
  for (Tensor* t : {&d.clean, &d.clean_valid, &d.canvas, &d.diff_targets, &d.diff_mask, &d.ar_targets, &d.ar_mask,
                    &d.sc_logits})
    if (t->defined() && t->numel() > 0) *t = t->clone();
  return d;
}

void sft_ar_targets(const Tensor& clean, const Tensor& valid, Tensor& ar_targets, Tensor& ar_mask) {
  DG_CHECK(clean.dtype() == DType::I32 && clean.ndim() == 2, "sft_ar_targets: clean {}", clean.describe());
  const std::int64_t B = clean.size(0), S = clean.size(1);
  const bool has_valid = valid.defined() && valid.numel() > 0;
  ar_targets = Tensor::zeros({B, S}, DType::I32);
  ar_mask = Tensor::zeros({B, S}, DType::F32);
  for (std::int64_t b = 0; b < B; ++b)
    for (std::int64_t t = 0; t + 1 < S; ++t) {
      const bool on = !has_valid || (valid.data<std::int32_t>()[b * S + t] != 0 &&
                                     valid.data<std::int32_t>()[b * S + t + 1] != 0);
      ar_targets.data<std::int32_t>()[b * S + t] = clean.data<std::int32_t>()[b * S + t + 1];
      ar_mask.data<float>()[b * S + t] = on ? 1.0f : 0.0f;
    }
}

namespace {

// One pass (encode or decode) over T = B·L tokens: per-layer saved activations and attention options,
// the RoPE tables of both layer types, and the final norm.
struct Pass {
  std::int64_t B = 0, L = 0;
  std::vector<LayerSaved> layers;
  std::vector<AttnOpts> opts;
  RopeTables rope_sliding, rope_full;
  Tensor token_mask;          // i32 [T]
  Tensor x_final, rstd_final; // last layer output [T,H] and the final norm's rstd
  Tensor hidden;              // final-normed hidden states [T,H]
  const RopeTables& rope(const LayerSpec& s) const { return s.type == LayerType::Full ? rope_full : rope_sliding; }
};

// The decoder input with self-conditioning (training.md §1.4), saved for the backward.
struct DecoderInput {
  bool has_sc = false;
  Tensor soft;            // [T,H] soft embedding with coin-0 rows zeroed
  Tensor n, rstd_n;       // rms(soft; sc.pre_norm)
  Tensor gu, act;         // self-conditioning MLP
  Tensor e, rstd_e;       // tok + sc, and its weightless norm
};

LmHeadOpts head_opts(const ModelConfig& c) {
  LmHeadOpts o;
  o.softcap = static_cast<float>(c.final_logit_softcapping);
  return o;
}

void check_batch(const ModelConfig& c, const SftBatch& b) {
  DG_CHECK(b.clean.dtype() == DType::I32 && b.clean.ndim() == 2, "SftBatch.clean must be i32 [B, S], got {}",
           b.clean.describe());
  DG_CHECK(b.canvas.dtype() == DType::I32 && b.canvas.ndim() == 2 && b.canvas.size(0) == b.clean.size(0),
           "SftBatch.canvas must be i32 [B, R], got {}", b.canvas.describe());
  const std::int64_t B = b.clean.size(0), S = b.clean.size(1), R = b.canvas.size(1);
  DG_CHECK(std::ssize(b.prompt_len) == B && std::ssize(b.canvas_len) == B && std::ssize(b.sc_coin) == B,
           "SftBatch: prompt_len / canvas_len / sc_coin need {} entries", B);
  for (std::int64_t i = 0; i < B; ++i) {
    const auto u = static_cast<std::size_t>(i);
    DG_CHECK(b.prompt_len[u] >= 0 && b.canvas_len[u] >= 0 && b.canvas_len[u] <= R &&
                 b.prompt_len[u] + b.canvas_len[u] <= S,
             "SftBatch example {}: P {} R {} with S {} and canvas width {}", i, b.prompt_len[u], b.canvas_len[u], S, R);
  }
  DG_CHECK(b.diff_targets.shape() == (Shape{B, R}) && b.diff_mask.shape() == (Shape{B, R}) &&
               b.diff_mask.dtype() == DType::F32,
           "SftBatch diffusion targets {} / mask {} should be [{}, {}]", b.diff_targets.describe(),
           b.diff_mask.describe(), B, R);
  DG_CHECK(b.ar_targets.shape() == (Shape{B, S}) && b.ar_mask.shape() == (Shape{B, S}) && b.ar_mask.dtype() == DType::F32,
           "SftBatch AR targets {} / mask {} should be [{}, {}]", b.ar_targets.describe(), b.ar_mask.describe(), B, S);
  DG_CHECK(b.n_diff > 0 && b.n_ar > 0, "SftBatch normalisers must be > 0 (got {}, {})", b.n_diff, b.n_ar);
  (void)c;
}

// A host-built i32 tensor (positions, masks: functions of the shapes and the host-side batch layout)
// moved to where the model's tensors live; in strict-device mode the copy is device-resident.
Tensor upload_i32(const std::vector<std::int32_t>& v, Shape shape) {
  Tensor h = Tensor::host_empty(std::move(shape), DType::I32);
  std::copy(v.begin(), v.end(), h.data<std::int32_t>());
  return h.clone();
}

// f32 [B] row factors: 1 for examples whose self-conditioning coin is set, 0 otherwise.
Tensor coin_rows(const std::vector<std::uint8_t>& coin) {
  Tensor h = Tensor::host_empty({static_cast<std::int64_t>(coin.size())}, DType::F32);
  for (std::size_t i = 0; i < coin.size(); ++i) h.data<float>()[i] = coin[i] != 0 ? 1.0f : 0.0f;
  return h.clone();
}

// Runs every layer over x [B,L,H] (keys [enc K/V ; own]) and the final norm; fills pass.layers.
// What a pass keeps of each layer's activations: everything (for its backward), only what a recompute
// needs (the layer input, and the K/V the decoder passes read), or nothing (decode pass 1: no backward).
enum class Keep { All, Inputs, Nothing };

void run_layers(const ModelConfig& c, const ModelWeights& w, Tensor& x, Pass& pass, const Pass* encoder, bool decoder,
                const TrainParallel& par, Keep keep) {
  const std::int64_t T = pass.B * pass.L, H = c.hidden_size;
  pass.layers.assign(static_cast<std::size_t>(c.num_layers), LayerSaved{});
  for (int i = 0; i < c.num_layers; ++i) {
    const auto u = static_cast<std::size_t>(i);
    const LayerWeights& l = w.layers[u];
    Tensor ek, ev;
    if (encoder != nullptr) {
      ek = encoder->layers[u].k;
      ev = encoder->layers[u].v;
    }
    if (par.params != nullptr) par.params->forward_begin(i);
    layer::layer_forward(c, i, l, x, pass.rope(c.layer(i)), ek, ev, pass.opts[u], pass.token_mask,
                         decoder ? l.layer_scalar : l.encoder_layer_scalar, pass.layers[u],
                         par.experts);
    if (keep != Keep::All) {
      LayerSaved slim;
      if (keep == Keep::Inputs) {
        slim.x_in = pass.layers[u].x_in;
        slim.k = pass.layers[u].k;
        slim.v = pass.layers[u].v;
      }
      pass.layers[u] = std::move(slim);
    }
    if (par.params != nullptr) par.params->forward_end(i);
  }
  pass.x_final = x.reshape({T, H}).clone();
  pass.rstd_final = f32({T});
  pass.hidden = f32({T, H});
  rms_norm(pass.x_final, &w.norm, static_cast<float>(c.rms_norm_eps), pass.hidden, pass.rstd_final);
}

// Encoder pass over the clean sequence (training.md §4.1): positions 0..S-1, causal (+ window).
Pass encode_pass(const ModelConfig& c, const ModelWeights& w, const SftBatch& b, const TrainParallel& par) {
  Pass p;
  p.B = b.clean.size(0);
  p.L = b.clean.size(1);
  const std::int64_t T = p.B * p.L, H = c.hidden_size;
  Tensor valid = b.clean_valid;
  if (!valid.defined() || valid.numel() == 0) valid = upload_i32(std::vector<std::int32_t>(static_cast<std::size_t>(T), 1), {p.B, p.L});
  DG_CHECK(valid.shape() == b.clean.shape() && valid.dtype() == DType::I32, "SftBatch.clean_valid {} vs clean {}",
           valid.describe(), b.clean.describe());
  p.token_mask = valid.reshape({T});
  std::vector<std::int32_t> positions(static_cast<std::size_t>(T));
  for (std::int64_t i = 0; i < T; ++i) positions[static_cast<std::size_t>(i)] = static_cast<std::int32_t>(i % p.L);
  const Tensor pos = upload_i32(positions, {T});
  for (int i = 0; i < c.num_layers; ++i) {
    const LayerSpec& s = c.layer(i);
    RopeTables& rt = s.type == LayerType::Full ? p.rope_full : p.rope_sliding;
    if (!rt.cos.defined() || rt.cos.numel() == 0) rt = rope_tables(s, pos);
    AttnOpts o;
    o.mask = {AttnMaskKind::Causal, s.window, 0};
    o.key_valid = valid;
    p.opts.push_back(std::move(o));
  }
  Tensor x = f32({p.B, p.L, H});
  embedding(b.clean, w.embed_tokens, embed_scale(H, w.embed_tokens.dtype()), x);
  run_layers(c, w, x, p, nullptr, false, par, par.recompute_layers ? Keep::Inputs : Keep::All);
  return p;
}

// A decoder pass over the canvas (training.md §4.2): absolute positions P_b + j, the Canvas rule.
// soft: the self-conditioning soft embedding [T,H] (coin-0 rows zero), or undefined for none.
Pass decode_pass(const ModelConfig& c, const ModelWeights& w, const SftBatch& b, const Pass& enc, const Tensor& soft,
                 DecoderInput& in, const TrainParallel& par, Keep keep) {
  Pass p;
  p.B = b.canvas.size(0);
  p.L = b.canvas.size(1);
  const std::int64_t T = p.B * p.L, H = c.hidden_size, S = b.clean.size(1);
  const float eps = static_cast<float>(c.rms_norm_eps);
  std::vector<std::int32_t> positions(static_cast<std::size_t>(T)), mask(static_cast<std::size_t>(T));
  std::vector<AttnExample> examples;
  for (std::int64_t bi = 0; bi < p.B; ++bi) {
    const auto u = static_cast<std::size_t>(bi);
    examples.push_back({b.prompt_len[u], b.canvas_len[u]});
    for (std::int64_t j = 0; j < p.L; ++j) {
      const auto at = static_cast<std::size_t>(bi * p.L + j);
      positions[at] = static_cast<std::int32_t>(std::min(b.prompt_len[u] + j, S - 1));
      mask[at] = j < b.canvas_len[u] ? 1 : 0;
    }
  }
  const Tensor pos = upload_i32(positions, {T});
  p.token_mask = upload_i32(mask, {T});
  for (int i = 0; i < c.num_layers; ++i) {
    const LayerSpec& s = c.layer(i);
    RopeTables& rt = s.type == LayerType::Full ? p.rope_full : p.rope_sliding;
    if (!rt.cos.defined() || rt.cos.numel() == 0) rt = rope_tables(s, pos);
    AttnOpts o;
    o.mask = {AttnMaskKind::Canvas, s.window, c.canvas_length};
    o.examples = examples;
    p.opts.push_back(std::move(o));
  }

  // x0 = rms(E[canvas]·scale + sc_mlp(rms(soft; pre_norm)); no weight)
  in.e = f32({T, H});
  embedding(b.canvas.reshape({T}), w.embed_tokens, embed_scale(H, w.embed_tokens.dtype()), in.e);
  in.has_sc = soft.defined() && soft.numel() > 0;
  if (in.has_sc) {
    in.soft = soft;
    in.n = f32({T, H});
    in.rstd_n = f32({T});
    rms_norm(soft, &w.sc_pre_norm, eps, in.n, in.rstd_n);
    in.gu = layer::linear(in.n, w.sc_gate_up);
    in.act = f32({T, w.sc_gate_up.size(0) / 2});
    geglu(in.gu, in.act);
    add_(in.e, layer::linear(in.act, w.sc_down));
  }
  in.rstd_e = f32({T});
  Tensor x = f32({p.B, p.L, H});
  Tensor xt = x.reshape({T, H});
  rms_norm(in.e, nullptr, eps, xt, in.rstd_e);
  run_layers(c, w, x, p, &enc, true, par, keep);
  return p;
}

// The layers of both passes backward, interleaved top-down: for each layer i from the last, decode pass
// 2's layer i (whose K/V reads give d(encoder K/V of layer i)), then the encoder's layer i, which
// consumes them. A layer's gradient is then complete as soon as its encoder backward is done, so the
// parameter schedule can release it layer by layer. dx2 [B,R,H] / dxe [B,S,H]: d(output of the last
// layer) in, d(pass input) out.
void layers_backward(const ModelConfig& c, const ModelWeights& w, ModelGrads& g, const Pass& p2, const Pass& enc,
                     Tensor& dx2, Tensor& dxe, const TrainParallel& par) {
  for (int i = c.num_layers - 1; i >= 0; --i) {
    const auto u = static_cast<std::size_t>(i);
    if (par.params != nullptr) par.params->backward_begin(i);
    const LayerWeights& l = w.layers[u];
    Tensor d_enc_k = Tensor::zeros(enc.layers[u].k.shape(), DType::F32);
    Tensor d_enc_v = Tensor::zeros(enc.layers[u].v.shape(), DType::F32);
    Tensor none_k, none_v;
    // With recompute, the layer's forward runs again from its saved input (bit-identical activations).
    auto saved = [&](const Pass& p, const Pass* encoder, const Tensor& scalar) {
      if (!par.recompute_layers) return p.layers[u];
      LayerSaved full;
      Tensor x = p.layers[u].x_in.clone().reshape({p.B, p.L, c.hidden_size});
      layer::layer_forward(c, i, l, x, p.rope(c.layer(i)), encoder ? encoder->layers[u].k : Tensor(),
                           encoder ? encoder->layers[u].v : Tensor(), p.opts[u], p.token_mask, scalar, full, par.experts);
      return full;
    };
    layer::layer_backward(c, i, l, g.layers[u], saved(p2, &enc, l.layer_scalar), p2.rope(c.layer(i)), enc.layers[u].k,
                          enc.layers[u].v, p2.opts[u], l.layer_scalar, dx2, nullptr, nullptr, d_enc_k, d_enc_v,
                          par.experts);
    layer::layer_backward(c, i, l, g.layers[u], saved(enc, nullptr, l.encoder_layer_scalar), enc.rope(c.layer(i)),
                          Tensor(), Tensor(), enc.opts[u], l.encoder_layer_scalar, dxe, &d_enc_k, &d_enc_v, none_k,
                          none_v, par.experts);
    if (par.params != nullptr) par.params->backward_end(i);
  }
}

// d(final hidden) [T,H] -> d(last layer output) [B,L,H] through the final norm.
Tensor final_norm_backward(const ModelConfig& c, const ModelWeights& w, ModelGrads& g, const Pass& p,
                           const Tensor& dhidden) {
  Tensor dx = f32({p.B, p.L, c.hidden_size});
  Tensor dxt = dx.reshape({p.B * p.L, c.hidden_size});
  rms_norm_backward(dhidden, p.x_final, &w.norm, p.rstd_final, dxt, &g.norm);
  return dx;
}

// d embed_tokens += scale · softmax(softcap(h · Eᵀ))ᵀ · d_soft, one vocabulary chunk at a time: the
// table gradient of the soft embedding computed from the pass-1 hidden states h (the logits are
// detached, so nothing flows into h).
void soft_embedding_table_backward(const ModelConfig& c, const Tensor& h, const Tensor& table, float scale,
                                   const Tensor& d_soft, Tensor& d_table) {
  const std::int64_t T = h.size(0), V = table.size(0);
  const LmHeadOpts opts = head_opts(c);
  Tensor entropy = f32({T}), argmax = Tensor::empty({T}, DType::I32), lse = f32({T});
  lm_head_entropy_argmax(h, table, 1.0f, entropy, argmax, &lse, opts);
  const std::int64_t chunk = std::min<std::int64_t>(V, opts.vocab_chunk);
  for (std::int64_t v0 = 0; v0 < V; v0 += chunk) {
    const std::int64_t n = std::min(chunk, V - v0);
    Tensor pc = f32({T, n});
    gemm(h, table.rows(v0, v0 + n), pc, {.trans_b = true});
    softcap(pc, opts.softcap, pc);
    exp_minus_rows_(pc, lse);
    Tensor dt = d_table.rows(v0, v0 + n);
    gemm(pc, d_soft, dt, {.trans_a = true, .alpha = scale, .beta = 1.0f});
  }
}

StepLosses run(const ModelConfig& c, const ModelWeights& w, const SftBatch& b, ModelGrads* g, const SftLossScale& sc,
               const TrainParallel& par) {
  check_batch(c, b);
  ParamSchedule* sched = par.params;
  const std::int64_t B = b.clean.size(0), S = b.clean.size(1), R = b.canvas.size(1), H = c.hidden_size;
  const std::int64_t Te = B * S, Td = B * R;
  if (sched != nullptr) sched->forward_begin(ParamSchedule::kRootUnit);
  const float scale = embed_scale(H, w.embed_tokens.dtype());
  const LmHeadOpts opts = head_opts(c);

  // 1. Encode + AR loss.
  const Pass enc = encode_pass(c, w, b, par);
  StepLosses out;
  Tensor lse_ar = f32({Te});
  out.ar = lm_head_cross_entropy(enc.hidden, w.embed_tokens, b.ar_targets.reshape({Te}), b.ar_mask.reshape({Te}),
                                 b.n_ar, lse_ar, opts);
  out.ar_tokens = sum_all(b.ar_mask);
  note_host_read("ar_loss");
  note_host_read("ar_tokens");

  // 2. Decode pass 1 (no grad); its soft embedding, coin-0 rows zeroed. Pass 1 always runs (§5.1)
  //    unless the caller gives the self-conditioning logits.
  Tensor soft, h1, sc_lse;
  const bool given_sc = b.sc_logits.defined() && b.sc_logits.numel() > 0;
  if (given_sc) {
    DG_CHECK(b.sc_logits.dtype() == DType::F32 && b.sc_logits.shape() == (Shape{B, R, c.vocab_size}),
             "SftBatch.sc_logits must be f32 [{}, {}, {}], got {}", B, R, c.vocab_size, b.sc_logits.describe());
  } else {
    DecoderInput none;
    Pass p1 = decode_pass(c, w, b, enc, Tensor(), none, par, Keep::Nothing);
    h1 = p1.hidden;
  }
  const bool any_coin = std::any_of(b.sc_coin.begin(), b.sc_coin.end(), [](std::uint8_t x) { return x != 0; });
  if (any_coin) {
    soft = f32({Td, H});
    if (given_sc) {
      sc_lse = f32({Td});
      soft_embedding(b.sc_logits.reshape({Td, c.vocab_size}), w.embed_tokens, scale, soft, sc_lse);
    } else {
      lm_head_soft_embedding(h1, w.embed_tokens, 1.0f, scale, soft, opts);
    }
    scale_rows_(soft, coin_rows(b.sc_coin));  // coin-0 examples get no self-conditioning
  }

  // 3. Decode pass 2 + diffusion loss.
  DecoderInput in;
  const Pass p2 = decode_pass(c, w, b, enc, soft, in, par,
                              g == nullptr ? Keep::Nothing : par.recompute_layers ? Keep::Inputs : Keep::All);
  Tensor lse_d = f32({Td});
  out.diffusion = lm_head_cross_entropy(p2.hidden, w.embed_tokens, b.diff_targets.reshape({Td}),
                                        b.diff_mask.reshape({Td}), b.n_diff, lse_d, opts);
  out.diff_tokens = sum_all(b.diff_mask);
  note_host_read("diffusion_loss");
  note_host_read("diffusion_tokens");
  out.total = out.diffusion + sc.ar_weight * out.ar;
  if (g == nullptr) {
    if (sched != nullptr) sched->forward_end(ParamSchedule::kRootUnit);
    return out;
  }

  // 4. Backward. Both heads (diffusion loss on pass 2, AR loss on the encoder) and the final norm.
  if (sched != nullptr) sched->backward_begin(ParamSchedule::kRootUnit);
  Tensor dx2, dxe;
  {
    Tensor dh = f32({Td, H});
    lm_head_cross_entropy_backward(p2.hidden, w.embed_tokens, b.diff_targets.reshape({Td}), b.diff_mask.reshape({Td}),
                                   b.n_diff, lse_d, sc.loss_scale, dh, &g->embed_tokens, opts);
    dx2 = final_norm_backward(c, w, *g, p2, dh);
  }
  {
    Tensor dh = f32({Te, H});
    lm_head_cross_entropy_backward(enc.hidden, w.embed_tokens, b.ar_targets.reshape({Te}), b.ar_mask.reshape({Te}),
                                   b.n_ar, lse_ar, static_cast<float>(sc.loss_scale * sc.ar_weight), dh,
                                   &g->embed_tokens, opts);
    dxe = final_norm_backward(c, w, *g, enc, dh);
  }
  // 5. The layers, pass 2 and encoder interleaved top-down (their K/V gradients flow within a layer).
  layers_backward(c, w, *g, p2, enc, dx2, dxe, par);
  // 6. Decoder input: x0 = rms(e; no weight), e = E[canvas]·scale + sc.
  {
    Tensor dx0 = dx2.reshape({Td, H});
    Tensor de = f32({Td, H});
    rms_norm_backward(dx0, in.e, nullptr, in.rstd_e, de, nullptr);
    {
      Tensor de_lookup = de.clone();  // the pad rows are dropped for the lookup only, not for the sc MLP
      zero_rows_where_(de_lookup, b.canvas, c.pad_token_id);  // the reference's padding_idx: no gradient
      embedding_backward(b.canvas.reshape({Td}), de_lookup, scale, g->embed_tokens);
    }
    if (in.has_sc) {
      Tensor dact = f32(in.act.shape()), dgu = f32(in.gu.shape()), dn = f32({Td, H}), dsoft = f32({Td, H});
      layer::linear_backward(de, in.act, w.sc_down, dact, g->sc_down);
      geglu_backward(dact, in.gu, dgu);
      layer::linear_backward(dgu, in.n, w.sc_gate_up, dn, g->sc_gate_up);
      rms_norm_backward(dn, in.soft, &w.sc_pre_norm, in.rstd_n, dsoft, &g->sc_pre_norm);
      scale_rows_(dsoft, coin_rows(b.sc_coin));
      if (given_sc)
        soft_embedding_backward(dsoft, b.sc_logits.reshape({Td, c.vocab_size}), w.embed_tokens, scale, soft, sc_lse,
                                nullptr, g->embed_tokens);
      else
        soft_embedding_table_backward(c, h1, w.embed_tokens, scale, dsoft, g->embed_tokens);
    }
  }
  // 7. The clean-token embedding of the encoder.
  {
    Tensor dxt = dxe.reshape({Te, H});
    zero_rows_where_(dxt, b.clean, c.pad_token_id);
    embedding_backward(b.clean.reshape({Te}), dxt, scale, g->embed_tokens);
  }
  if (sched != nullptr) {
    sched->backward_end(ParamSchedule::kRootUnit);
    sched->forward_end(ParamSchedule::kRootUnit);
  }
  return out;
}

}  // namespace

StepLosses sft_forward_backward(const ModelConfig& c, const ModelWeights& w, const SftBatch& batch, ModelGrads& grads,
                                const SftLossScale& scale, const TrainParallel& par) {
  return run(c, w, batch, &grads, scale, par);
}

StepLosses sft_forward(const ModelConfig& c, const ModelWeights& w, const SftBatch& batch, const SftLossScale& scale,
                       const TrainParallel& par) {
  return run(c, w, batch, nullptr, scale, par);
}

}  // namespace dg
