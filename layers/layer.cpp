// One transformer layer: forward saving its activations, and the hand-written backward beside it
// (spec/training.md §1.3, §6.1, §8.1). See layers/layer.h.
#include "layers/layer.h"

namespace dg::layer {

Tensor f32(Shape s) { return Tensor::empty(std::move(s), DType::F32); }

Tensor linear(const Tensor& x, const Tensor& weight) {
  Tensor y = f32({x.size(0), weight.size(0)});
  gemm(x, weight, y, {.trans_b = true});
  return y;
}

void linear_backward(const Tensor& dy, const Tensor& x, const Tensor& weight, Tensor& dx, Tensor& dweight,
                     bool accumulate_dx) {
  gemm(dy, weight, dx, {.beta = accumulate_dx ? 1.0f : 0.0f});
  gemm(dy, x, dweight, {.trans_a = true, .beta = 1.0f});
}


namespace {
Shape rows_of(const Tensor& x) { return Shape(x.shape().begin(), x.shape().end() - 1); }
}  // namespace

Tensor norm(const Tensor& x, const Tensor* weight, float eps, Tensor& rstd) {
  Tensor y = f32(x.shape());
  rstd = f32(rows_of(x));
  rms_norm(x, weight, eps, y, rstd);
  return y;
}

Tensor mlp(const Tensor& x, const Tensor& gate_up, const Tensor& down) {
  Tensor gu = linear(x, gate_up);
  Tensor act = f32({x.size(0), gate_up.size(0) / 2});
  geglu(gu, act);
  return linear(act, down);
}

namespace {

// dx of a norm (written to a new tensor); dweight accumulated when given.
Tensor norm_backward(const Tensor& dy, const Tensor& x, const Tensor* weight, const Tensor& rstd, Tensor* dweight) {
  Tensor dx = f32(x.shape());
  rms_norm_backward(dy, x, weight, rstd, dx, dweight);
  return dx;
}

// The experts of one MoE layer on the permuted rows s.xp [N, H] -> s.yp [N, H]. Under expert
// parallelism the rows travel to the ranks owning their experts and back (one grouped GEMM per
// direction on the rows the local experts received); otherwise the local experts are all experts.
void experts_forward(const LayerWeights& l, LayerSaved& s, std::int64_t Fm, ExpertExchange* ex) {
  const std::int64_t N = s.xp.size(0), H = s.xp.size(1);
  Tensor counts = s.counts;
  if (ex != nullptr) {
    s.route = ex->route(s.counts);
    s.xr = f32({s.route.received, H});
    ex->to_owners(s.route, s.xp, s.xr);
    counts = s.route.local_counts;
  } else {
    s.xr = s.xp;
  }
  const std::int64_t Nr = s.xr.size(0);
  s.gue = f32({Nr, 2 * Fm});
  s.acte = f32({Nr, Fm});
  grouped_gemm(s.xr, l.experts_gate_up, counts, s.gue);
  geglu(s.gue, s.acte);
  Tensor yr = f32({Nr, H});
  grouped_gemm(s.acte, l.experts_down, counts, yr);
  if (ex != nullptr) {
    s.yp = f32({N, H});
    ex->to_sources(s.route, yr, s.yp);
  } else {
    s.yp = yr;
  }
}

// dyp [N, H] -> dxp [N, H]; the expert weight gradients accumulate on their owner (this rank's g).
void experts_backward(const LayerWeights& l, LayerWeights& g, const LayerSaved& s, const Tensor& dyp, Tensor& dxp,
                      ExpertExchange* ex) {
  const std::int64_t H = s.xr.size(1), Nr = s.xr.size(0), Fm = s.acte.size(1);
  Tensor dyr = dyp, counts = s.counts;
  if (ex != nullptr) {
    dyr = f32({Nr, H});
    ex->to_owners(s.route, dyp, dyr);
    counts = s.route.local_counts;
  }
  Tensor dacte = f32({Nr, Fm}), dgue = f32({Nr, 2 * Fm}), dxr = ex != nullptr ? f32({Nr, H}) : dxp;
  grouped_gemm_backward(s.acte, l.experts_down, counts, dyr, &dacte, &g.experts_down);
  geglu_backward(dacte, s.gue, dgue);
  grouped_gemm_backward(s.xr, l.experts_gate_up, counts, dgue, &dxr, &g.experts_gate_up);
  if (ex != nullptr) ex->to_sources(s.route, dxr, dxp);
}

}  // namespace


void layer_forward(const ModelConfig& c, int li, const LayerWeights& l, Tensor& x, const RopeTables& rt,
                   const Tensor& enc_k, const Tensor& enc_v, const AttnOpts& opts, const Tensor& token_mask,
                   const Tensor& scalar, LayerSaved& s, ExpertExchange* experts) {
  const LayerSpec& spec = c.layer(li);
  const std::int64_t B = x.size(0), S = x.size(1), H = c.hidden_size, T = B * S;
  const std::int64_t nh = c.num_heads, nkv = spec.num_kv_heads, hd = spec.head_dim;
  const std::int64_t k = c.top_k, E = c.num_experts, Fm = c.moe_intermediate_size;
  const float eps = static_cast<float>(c.rms_norm_eps);

  // Attention (model.md §3.4): q/k per-head norms and RoPE, v weightless norm, scale 1.
  s.x_in = x.reshape({T, H}).clone();
  s.a_in = norm(s.x_in, &l.input_layernorm, eps, s.rstd_in);
  s.q_lin = linear(s.a_in, l.q_proj).reshape({T, nh, hd});
  s.kraw = linear(s.a_in, l.k_proj).reshape({T, nkv, hd});
  s.vraw = spec.has_v_proj ? linear(s.a_in, l.v_proj).reshape({T, nkv, hd}) : s.kraw;
  Tensor q = norm(s.q_lin, &l.q_norm, eps, s.rstd_q);
  rope(q, rt.cos, rt.sin, q);
  s.q = q.reshape({B, S, nh, hd});
  Tensor kk = norm(s.kraw, &l.k_norm, eps, s.rstd_k);
  rope(kk, rt.cos, rt.sin, kk);
  s.k = kk.reshape({B, S, nkv, hd});
  s.v = norm(s.vraw, nullptr, eps, s.rstd_v).reshape({B, S, nkv, hd});
  s.o = f32({B, S, nh, hd});
  s.lse = f32({B, nh, S});
  attention(s.q, s.k, s.v, enc_k, enc_v, opts, s.o, s.lse);
  s.proj_o = linear(s.o.reshape({T, nh * hd}), l.o_proj);
  s.r = norm(s.proj_o, &l.post_attention_layernorm, eps, s.rstd_pa);
  add_(s.r, s.x_in);

  // Dense MLP branch.
  s.x1 = norm(s.r, &l.pre_feedforward_layernorm, eps, s.rstd_x1);
  s.gu1 = linear(s.x1, l.mlp_gate_up);
  s.act1 = f32({T, l.mlp_gate_up.size(0) / 2});
  geglu(s.gu1, s.act1);
  s.d1 = linear(s.act1, l.mlp_down);
  Tensor m1 = norm(s.d1, &l.post_feedforward_layernorm_1, eps, s.rstd_d1);

  // MoE branch: routed on h1 = r, experts on x2 (training.md §1.3, §8.1); padded tokens dropped.
  s.x2 = norm(s.r, &l.pre_feedforward_layernorm_2, eps, s.rstd_x2);
  s.expert_ids = Tensor::empty({T, k}, DType::I32);
  s.routing_weights = f32({T, k});
  s.probs = f32({T, E});
  s.rstd_r = f32({T});
  moe_router(s.r, l.router_scale, l.router_proj, l.router_per_expert_scale, s.expert_ids, s.routing_weights, s.probs,
             s.rstd_r, eps);
  s.counts = Tensor::empty({E}, DType::I32);
  s.row_token = Tensor::empty({T * k}, DType::I32);
  s.slot_row = Tensor::empty({T, k}, DType::I32);
  const std::int64_t N = moe_permute_plan(s.expert_ids, E, s.counts, s.row_token, s.slot_row, token_mask);
  s.xp = f32({N, H});
  moe_gather(s.x2, s.row_token, s.xp);
  experts_forward(l, s, Fm, experts);
  s.moe_out = f32({T, H});
  moe_combine(s.yp, s.routing_weights, s.slot_row, s.moe_out);
  Tensor m2 = norm(s.moe_out, &l.post_feedforward_layernorm_2, eps, s.rstd_m2);

  // h_out = (h1 + rms(dense + moe)) · scalar.
  s.s = m1;
  add_(s.s, m2);
  Tensor out = norm(s.s, &l.post_feedforward_layernorm, eps, s.rstd_s);
  add_(out, s.r);
  scale_by_(out, scalar);
  x.reshape({T, H}).copy_from(out);
}

void layer_backward(const ModelConfig& c, int li, const LayerWeights& l, LayerWeights& g, const LayerSaved& s,
                    const RopeTables& rt, const Tensor& enc_k, const Tensor& enc_v, const AttnOpts& opts, const Tensor& scalar,
                    Tensor& dx, const Tensor* extra_dk, const Tensor* extra_dv, Tensor& d_enc_k, Tensor& d_enc_v,
                    ExpertExchange* experts) {
  const LayerSpec& spec = c.layer(li);
  const std::int64_t B = dx.size(0), S = dx.size(1), H = c.hidden_size, T = B * S;
  const std::int64_t nh = c.num_heads, nkv = spec.num_kv_heads, hd = spec.head_dim;
  const std::int64_t k = c.top_k, N = s.xp.size(0);

  // out = (r + f) · scalar, f = rms(s; post_feedforward_layernorm)
  Tensor dr = dx.reshape({T, H}).clone();
  scale_by_(dr, scalar);
  const Tensor ds = norm_backward(dr, s.s, &l.post_feedforward_layernorm, s.rstd_s, &g.post_feedforward_layernorm);

  // Dense branch.
  {
    const Tensor dd1 = norm_backward(ds, s.d1, &l.post_feedforward_layernorm_1, s.rstd_d1,
                                     &g.post_feedforward_layernorm_1);
    Tensor dact1 = f32(s.act1.shape());
    linear_backward(dd1, s.act1, l.mlp_down, dact1, g.mlp_down);
    Tensor dgu1 = f32(s.gu1.shape());
    geglu_backward(dact1, s.gu1, dgu1);
    Tensor dx1 = f32({T, H});
    linear_backward(dgu1, s.x1, l.mlp_gate_up, dx1, g.mlp_gate_up);
    add_(dr, norm_backward(dx1, s.r, &l.pre_feedforward_layernorm, s.rstd_x1, &g.pre_feedforward_layernorm));
  }
  // MoE branch, including the routing-weight path into r (router parameters frozen, §6.1).
  {
    const Tensor dmoe = norm_backward(ds, s.moe_out, &l.post_feedforward_layernorm_2, s.rstd_m2,
                                      &g.post_feedforward_layernorm_2);
    Tensor dyp = f32({N, H}), dweights = f32({T, k});
    moe_combine_backward(dmoe, s.yp, s.routing_weights, s.slot_row, dyp, dweights);
    Tensor dxp = f32({N, H}), dx2 = f32({T, H});
    experts_backward(l, g, s, dyp, dxp, experts);
    moe_gather_backward(dxp, s.slot_row, dx2);
    add_(dr, norm_backward(dx2, s.r, &l.pre_feedforward_layernorm_2, s.rstd_x2, &g.pre_feedforward_layernorm_2));
    Tensor drr = f32({T, H});
    moe_router_backward(s.r, l.router_scale, l.router_proj, l.router_per_expert_scale, s.expert_ids, s.probs,
                        s.rstd_r, dweights, drr);
    add_(dr, drr);
  }
  // Attention: r = x_in + rms(o_proj(o); post_attention_layernorm).
  Tensor dxin = dr.clone();
  const Tensor dproj = norm_backward(dr, s.proj_o, &l.post_attention_layernorm, s.rstd_pa, &g.post_attention_layernorm);
  Tensor dout = f32({T, nh * hd});
  linear_backward(dproj, s.o.reshape({T, nh * hd}), l.o_proj, dout, g.o_proj);
  Tensor dq = f32({B, S, nh, hd}), dk = f32({B, S, nkv, hd}), dv = f32({B, S, nkv, hd});
  attention_backward(s.q, s.k, s.v, enc_k, enc_v, opts, s.o, s.lse, dout.reshape({B, S, nh, hd}), dq, dk, dv, d_enc_k,
                     d_enc_v);
  if (extra_dk != nullptr) add_(dk, *extra_dk);
  if (extra_dv != nullptr) add_(dv, *extra_dv);

  Tensor dvraw = norm_backward(dv.reshape({T, nkv, hd}), s.vraw, nullptr, s.rstd_v, nullptr);
  Tensor dkn = dk.reshape({T, nkv, hd});
  rope_backward(dkn, rt.cos, rt.sin, dkn);
  Tensor dkraw = norm_backward(dkn, s.kraw, &l.k_norm, s.rstd_k, &g.k_norm);
  Tensor dqn = dq.reshape({T, nh, hd});
  rope_backward(dqn, rt.cos, rt.sin, dqn);
  const Tensor dqlin = norm_backward(dqn, s.q_lin, &l.q_norm, s.rstd_q, &g.q_norm);

  Tensor da = f32({T, H});
  linear_backward(dqlin.reshape({T, nh * hd}), s.a_in, l.q_proj, da, g.q_proj);
  if (spec.has_v_proj) {
    linear_backward(dvraw.reshape({T, nkv * hd}), s.a_in, l.v_proj, da, g.v_proj, /*accumulate_dx=*/true);
  } else {
    add_(dkraw, dvraw);  // full layers: V is the weightless norm of the raw k projection
  }
  linear_backward(dkraw.reshape({T, nkv * hd}), s.a_in, l.k_proj, da, g.k_proj, /*accumulate_dx=*/true);
  add_(dxin, norm_backward(da, s.x_in, &l.input_layernorm, s.rstd_in, &g.input_layernorm));
  dx.reshape({T, H}).copy_from(dxin);
}

}  // namespace dg::layer
