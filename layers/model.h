// The DiffusionGemma model (spec/model.md §1-§6): weights, the KV cache, and the forward passes every
// job uses, assembled from the ops of layers/ops.h.
//
//   encode(ids, cache)             causal pass over new tokens (a prompt, a committed canvas, or the
//                                  clean SFT sequence); appends every layer's K/V to the cache
//                                  (full layers keep all tokens, sliding layers the last W-1) and
//                                  returns the final-normed hidden states
//   decode(canvas, sc, cache)      bidirectional pass over a canvas that reads the cache; returns the
//                                  final-normed hidden states of the canvas
//   logits(hidden)                 tied LM head + softcap (small vocabularies and tests; the jobs use
//                                  the chunked head ops of layers/ops/head.h)
//
// One layer stack serves both passes (DESIGN.md "Model parameters and names"); the only per-pass
// difference besides the mask is the layer scalar (decoder: layer_scalar, encoder:
// encoder_layer_scalar).
#pragma once
#include <functional>
#include <string>
#include <vector>

#include "layers/model_config.h"
#include "layers/tensor.h"

namespace dg {

// Native layout. Linear weights are [out, in] as in HF (y = x · Wᵀ). The dense and self-conditioning
// MLPs keep gate and up in one [2F, H] tensor (rows [0, F) gate, [F, 2F) up) so one GEMM feeds the
// GEGLU; the names mlp.gate_proj / mlp.up_proj are row views of it. Experts are stored transposed for
// the grouped GEMM: gate_and_up_projs [E, H, 2Fm], down_projs [E, Fm, H].
struct LayerWeights {
  Tensor q_proj, k_proj, v_proj, o_proj;  // v_proj undefined on full layers
  Tensor q_norm, k_norm;
  Tensor input_layernorm, post_attention_layernorm;
  Tensor pre_feedforward_layernorm, post_feedforward_layernorm_1;    // dense branch
  Tensor pre_feedforward_layernorm_2, post_feedforward_layernorm_2;  // MoE branch
  Tensor post_feedforward_layernorm;                                 // after dense + MoE
  Tensor mlp_gate_up, mlp_down;                                      // [2F, H], [H, F]
  Tensor router_proj, router_scale, router_per_expert_scale;         // [E, H], [H], [E]
  Tensor experts_gate_up, experts_down;                              // [E, H, 2Fm], [E, Fm, H]
  Tensor layer_scalar, encoder_layer_scalar;                         // [1] each
};

struct ModelWeights {
  Tensor embed_tokens;  // [V, H], tied LM head
  Tensor norm;          // [H]
  Tensor sc_pre_norm, sc_gate_up, sc_down;  // self-conditioning: [H], [2F, H], [H, F]
  std::vector<LayerWeights> layers;
};

// Gradients in the exact layout of the weights.
using ModelGrads = ModelWeights;

// Allocates every weight (zero-filled, f32, CPU) with the shape the config implies.
ModelWeights allocate_model(const ModelConfig& c);

// Every parameter under its native name (DESIGN.md), in a fixed order, as handles sharing the
// weights' storage (mlp.gate_proj / mlp.up_proj are row views of mlp_gate_up). Loaders, checkpoints
// and the optimizer walk this list.
struct NamedTensor {
  std::string name;
  Tensor tensor;
};
std::vector<NamedTensor> model_tensors(const ModelConfig& c, const ModelWeights& w);

// The same list without any weights: name, shape, and how to find the tensor in a ModelWeights.
// Jobs that stream a model tensor by tensor (init, convert) use it instead of allocating the model.
// slot: the ModelWeights member the tensor is stored in (mlp.gate_proj and mlp.up_proj are both parts
// of mlp_gate_up: slot_offset is where the tensor starts inside it, in elements), so that whoever
// holds the storage elsewhere (an FSDP unit) can bind the member to it.
struct ParamSpec {
  std::string name;
  Shape shape;
  std::function<Tensor(const ModelWeights&)> get;
  std::function<Tensor&(ModelWeights&)> slot;
  Shape slot_shape;
  std::int64_t slot_offset = 0;
};
std::vector<ParamSpec> model_params(const ModelConfig& c);

// RoPE cos/sin tables [T, hd/2] of one layer type at the given positions (i32 [T]); every pass builds
// one per layer type.
struct RopeTables {
  Tensor cos, sin;
};
RopeTables rope_tables(const LayerSpec& s, const Tensor& positions);

// ---- KV cache ------------------------------------------------------------------------------------
struct LayerKV {
  Tensor k, v;   // [B, T_l, nkv, hd] (T_l <= W-1 on sliding layers)
  Tensor valid;  // i32 [B, T_l]: 0 marks a padding token
};
struct KVCache {
  std::vector<LayerKV> layers;
  std::int64_t length = 0;  // tokens encoded so far (cumulative; the next token's position)
  std::int64_t batch = 0;
  // Optional i32 [B], added to every position of the row. The reference does not shift positions for
  // left padding (model.md §6.4), which makes a row's result depend on its batch mates; setting the
  // offset to -(left pad count) gives every row the positions it would have alone (generation does).
  Tensor row_offset;
};

// ---- Forward -------------------------------------------------------------------------------------
struct EncodeOut {
  Tensor hidden;                     // [B, S, H] after the final norm
  std::vector<Tensor> layer_hidden;  // [B, S, H] per layer (after its scalar), when requested
};

// ids: i32 [B, S]; valid: optional i32 [B, S] (0 = padding, e.g. left padding of a prompt). Positions
// continue from cache.length for every row (padding does not shift them, as in the reference).
EncodeOut encode(const ModelConfig& c, const ModelWeights& w, const Tensor& ids, const Tensor& valid, KVCache& cache,
                 bool keep_layer_hidden = false);

// canvas: i32 [B, C]; sc_logits: optional f32 [B, C, V] self-conditioning logits (undefined: none).
// Returns the final-normed hidden states [B, C, H]. Canvas positions are cache.length + [0, C).
Tensor decode(const ModelConfig& c, const ModelWeights& w, const Tensor& canvas, const Tensor& sc_logits,
              const KVCache& cache);

// The same with the self-conditioning soft embedding given directly ([B, C, H], e.g. from
// lm_head_soft_embedding of the previous step; undefined: none), which is what generation uses so
// that no [B, C, V] logits are ever held.
Tensor decode_soft(const ModelConfig& c, const ModelWeights& w, const Tensor& canvas, const Tensor& sc_soft,
                   const KVCache& cache);

// hidden [..., H] -> softcapped logits [..., V] (f32).
Tensor logits(const ModelConfig& c, const ModelWeights& w, const Tensor& hidden);

}  // namespace dg
