#include "layers/vision.h"

#include <fmt/format.h>

namespace dg {

namespace {

// A Gemma4ClippableLinear: its clip buffers (use_clipped_linears) registered before the inner nn.Linear.
void clippable_linear(std::vector<CarriedSpec>& out, const VisionConfig& v, const std::string& prefix, std::int64_t in,
                      std::int64_t out_features) {
  if (v.use_clipped_linears) {
    out.push_back({prefix + ".input_min", {}, CarriedInit::MinusInf});
    out.push_back({prefix + ".input_max", {}, CarriedInit::PlusInf});
    out.push_back({prefix + ".output_min", {}, CarriedInit::MinusInf});
    out.push_back({prefix + ".output_max", {}, CarriedInit::PlusInf});
  }
  out.push_back(
      {prefix + ".linear.weight", {out_features, in}, CarriedInit::Normal, static_cast<float>(v.initializer_range)});
}

void encoder_layer(std::vector<CarriedSpec>& out, const VisionConfig& v, const std::string& p) {
  const std::int64_t h = v.hidden_size, q = std::int64_t{v.num_heads} * v.head_dim,
                     kv = std::int64_t{v.num_kv_heads} * v.head_dim, f = v.intermediate_size;
  clippable_linear(out, v, p + "self_attn.q_proj", h, q);
  clippable_linear(out, v, p + "self_attn.k_proj", h, kv);
  clippable_linear(out, v, p + "self_attn.v_proj", h, kv);
  clippable_linear(out, v, p + "self_attn.o_proj", q, h);
  out.push_back({p + "self_attn.q_norm.weight", {v.head_dim}, CarriedInit::Ones});
  out.push_back({p + "self_attn.k_norm.weight", {v.head_dim}, CarriedInit::Ones});
  clippable_linear(out, v, p + "mlp.gate_proj", h, f);
  clippable_linear(out, v, p + "mlp.up_proj", h, f);
  clippable_linear(out, v, p + "mlp.down_proj", f, h);
  for (const char* norm : {"input_layernorm", "post_attention_layernorm", "pre_feedforward_layernorm",
                           "post_feedforward_layernorm"})
    out.push_back({p + norm + ".weight", {h}, CarriedInit::Ones});
}

}  // namespace

std::vector<CarriedSpec> vision_params(const VisionConfig& v) {
  const std::string tower = "model.encoder.vision_tower.";
  const std::int64_t h = v.hidden_size;
  std::vector<CarriedSpec> out;
  if (v.standardize) {  // buffers of Gemma4VisionModel itself, before its submodules
    out.push_back({tower + "std_bias", {h}, CarriedInit::Zeros});
    out.push_back({tower + "std_scale", {h}, CarriedInit::Ones});
  }
  out.push_back(
      {tower + "patch_embedder.position_embedding_table", {2, v.position_embedding_size, h}, CarriedInit::Ones});
  out.push_back({tower + "patch_embedder.input_proj.weight", {h, 3 * std::int64_t{v.patch_size} * v.patch_size},
                 CarriedInit::Normal, static_cast<float>(v.initializer_range)});
  for (int l = 0; l < v.num_layers; ++l) encoder_layer(out, v, fmt::format("{}encoder.layers.{}.", tower, l));
  out.push_back({"model.encoder.embed_vision.embedding_projection.weight",
                 {v.text_hidden_size, v.output_dims > 0 ? v.output_dims : h}, CarriedInit::Normal,
                 static_cast<float>(v.projector_initializer_range)});
  return out;
}

}  // namespace dg
