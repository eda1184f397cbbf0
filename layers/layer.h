// One transformer layer, forward and backward side by side (spec/training.md §1.3, §6.1, §8.1; model.md
// §3). The one implementation of the layer: generation's encode/decode (layers/model.cpp) and the SFT step
// (layers/train.cpp) both run layer_forward. It fills LayerSaved with everything the backward needs;
// generation passes a scratch LayerSaved that is dropped after the layer (it keeps only the layer's own
// K/V, saved.k and saved.v, for its cache). The backward recomputes nothing.
#pragma once
#include <cstdint>

#include "layers/model.h"
#include "layers/ops.h"
#include "layers/sharding.h"

namespace dg::layer {

using dg::RopeTables;  // layers/model.h
using dg::rope_tables;

// The activations of one layer's forward that its backward reads. T = B·S tokens.
struct LayerSaved {
  Tensor x_in, rstd_in, a_in;              // layer input [T,H]; input_layernorm
  Tensor q_lin, rstd_q, q;                 // q projection [T,nh,hd]; q_norm; q after norm + RoPE [B,S,nh,hd]
  Tensor kraw, rstd_k, k;                  // k projection; k_norm; k after norm + RoPE [B,S,nkv,hd] (the layer's K)
  Tensor vraw, rstd_v, v;                  // v projection (= kraw on full layers); v_norm; V [B,S,nkv,hd]
  Tensor o, lse;                           // attention output [B,S,nh,hd], log-sum-exp [B,nh,S]
  Tensor proj_o, rstd_pa;                  // o_proj output; post_attention_layernorm
  Tensor r;                                // h1 = x_in + attention branch [T,H] (the router's input)
  Tensor x1, rstd_x1, gu1, act1, d1, rstd_d1;  // dense branch
  Tensor x2, rstd_x2;                          // MoE branch input
  Tensor expert_ids, routing_weights, probs, rstd_r;  // router
  Tensor counts, row_token, slot_row;                 // permutation plan (global expert ids)
  ExpertRoute route;                                  // expert parallelism: the exchange plan
  Tensor xp, xr, gue, acte, yp, moe_out, rstd_m2;     // experts (xr: the rows the local experts ran on)
  Tensor s, rstd_s;                                   // dense + MoE; post_feedforward_layernorm
};

// x [B,S,H] is replaced by the layer's output. enc_k / enc_v: the cached (encoder) K/V the queries
// also attend ([B,Tc,nkv,hd]; undefined for the encoder pass). token_mask: i32 [B·S] (0 = padding,
// dropped before the experts; undefined: every token goes to the experts, as generation does). scalar:
// layer_scalar or encoder_layer_scalar (f32 [1], read on the device). experts: the token
// exchange of expert parallelism (null: all experts local; l.experts_* then hold all E experts, else
// the E_local experts of this rank).
void layer_forward(const ModelConfig& c, int li, const LayerWeights& l, Tensor& x, const RopeTables& rt,
                   const Tensor& enc_k, const Tensor& enc_v, const AttnOpts& opts, const Tensor& token_mask,
                   const Tensor& scalar, LayerSaved& saved, ExpertExchange* experts = nullptr);

// dx: d(layer output) [B,S,H] in, d(layer input) out. extra_dk / extra_dv (may be null): gradients of the
// layer's own K/V from later passes (the decoder's reads of the encoder K/V), added to its own
// attention's. d_enc_k / d_enc_v ([B,Tc,nkv,hd]): accumulated (+=) gradients of the cached K/V.
// Parameter gradients accumulate into g; the router's parameters and the scalars get none (frozen).
void layer_backward(const ModelConfig& c, int li, const LayerWeights& l, LayerWeights& g, const LayerSaved& s,
                    const RopeTables& rt, const Tensor& enc_k, const Tensor& enc_v, const AttnOpts& opts, const Tensor& scalar,
                    Tensor& dx, const Tensor* extra_dk, const Tensor* extra_dv, Tensor& d_enc_k, Tensor& d_enc_v,
                    ExpertExchange* experts = nullptr);

// Small helpers shared with train.cpp and model.cpp.
Tensor f32(Shape s);
Tensor linear(const Tensor& x, const Tensor& weight);  // [T,in] · [out,in]ᵀ
Tensor norm(const Tensor& x, const Tensor* weight, float eps, Tensor& rstd);  // y = rms(x; weight), saving rstd
Tensor mlp(const Tensor& x, const Tensor& gate_up, const Tensor& down);      // GEGLU MLP, fused [2F, H] gate|up
// dx (=, or += when accumulate_dx) = dy · W; dW += dyᵀ · x.
void linear_backward(const Tensor& dy, const Tensor& x, const Tensor& weight, Tensor& dx, Tensor& dweight,
                     bool accumulate_dx = false);

}  // namespace dg::layer
