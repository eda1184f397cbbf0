#include "io/presets.h"

#include "layers/error.h"

namespace dg {

namespace {

nlohmann::json tiny() {
  // 6 layers (5 sliding + 1 full) keep every structural feature of the real model at a size that
  // trains in seconds on one CPU core; a 2-layer vision tower of width 32 (with the released model's
  // standardize buffers and a 64-entry position table) keeps the checkpoint layout complete at ~52k
  // parameters.
  return nlohmann::json::parse(R"({
    "architectures": ["DiffusionGemmaForBlockDiffusion"], "model_type": "diffusion_gemma",
    "canvas_length": 8, "eos_token_id": [1, 106],
    "text_config": {
      "model_type": "diffusion_gemma_text", "vocab_size": 2048, "hidden_size": 64,
      "intermediate_size": 128, "num_hidden_layers": 6, "num_attention_heads": 4,
      "num_key_value_heads": 2, "head_dim": 16, "num_experts": 8, "top_k_experts": 2,
      "moe_intermediate_size": 32, "sliding_window": 32, "rms_norm_eps": 1e-6,
      "final_logit_softcapping": 30.0, "use_bidirectional_attention": "vision",
      "layer_types": ["sliding_attention", "sliding_attention", "sliding_attention",
                      "sliding_attention", "sliding_attention", "full_attention"],
      "per_layer_config": {"5": {"head_dim": 32, "num_key_value_heads": 1}},
      "rope_parameters": {
        "full_attention": {"partial_rotary_factor": 0.25, "rope_theta": 1000000.0, "rope_type": "proportional"},
        "sliding_attention": {"rope_theta": 10000.0, "rope_type": "default"}},
      "pad_token_id": 0, "bos_token_id": 2, "eos_token_id": 1
    },
    "vision_config": {
      "model_type": "gemma4_vision", "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
      "num_attention_heads": 2, "num_key_value_heads": 2, "head_dim": 16, "patch_size": 16,
      "pooling_kernel_size": 3, "position_embedding_size": 64, "standardize": true, "use_clipped_linears": false
    }})");
}

// The released google/diffusiongemma-26B-A4B-it shape (model.md §1.3). Its vision tower is Gemma 4's
// 26B-A4B / 31B encoder (~550M parameters): 27 layers of width 1152, MLP 4304, 16 heads of dim 72 (the
// q_norm/k_norm width), patch 16, pooling 3, a 10240-entry position table, standardize on, clipped linears
// off. HF's Gemma4VisionConfig defaults (transformers 5.23: 16 layers of width 768) are the small models'
// encoder, not this one; these values are from the published Gemma 4 26B-A4B vision metadata (GGUF
// clip.vision.* of gemma4:26b-a4b: block_count 27, embedding_length 1152, feed_forward_length 4304,
// head_count 16, projection_dim 2816) and the gemma4_vision config.json of the extracted 31B tower
// (head_dim 72, standardize true, use_clipped_linears false) -- not read from the model's own
// config.json, which is not available offline: check them against it before relying on the preset's
// vision tower.
nlohmann::json released_26b() {
  nlohmann::json layer_types = nlohmann::json::array();
  for (int i = 0; i < 30; ++i) layer_types.push_back(i % 6 == 5 ? "full_attention" : "sliding_attention");
  nlohmann::json j = nlohmann::json::parse(R"({
    "architectures": ["DiffusionGemmaForBlockDiffusion"], "model_type": "diffusion_gemma",
    "canvas_length": 256, "eos_token_id": [1, 106],
    "text_config": {
      "model_type": "diffusion_gemma_text", "vocab_size": 262144, "hidden_size": 2816,
      "intermediate_size": 2112, "num_hidden_layers": 30, "num_attention_heads": 16,
      "num_key_value_heads": 8, "head_dim": 256, "global_head_dim": 512, "num_global_key_value_heads": 2,
      "num_experts": 128, "top_k_experts": 8, "moe_intermediate_size": 704, "sliding_window": 1024,
      "max_position_embeddings": 262144, "rms_norm_eps": 1e-6, "final_logit_softcapping": 30.0,
      "use_bidirectional_attention": "vision",
      "rope_parameters": {
        "full_attention": {"partial_rotary_factor": 0.25, "rope_theta": 1000000.0, "rope_type": "proportional"},
        "sliding_attention": {"rope_theta": 10000.0, "rope_type": "default"}},
      "pad_token_id": 0, "bos_token_id": 2, "eos_token_id": 1
    },
    "vision_config": {
      "model_type": "gemma4_vision", "hidden_size": 1152, "intermediate_size": 4304, "num_hidden_layers": 27,
      "num_attention_heads": 16, "num_key_value_heads": 16, "head_dim": 72, "patch_size": 16,
      "pooling_kernel_size": 3, "position_embedding_size": 10240, "rms_norm_eps": 1e-6,
      "standardize": true, "use_clipped_linears": false
    }})");
  j["text_config"]["layer_types"] = layer_types;
  return j;
}

}  // namespace

std::vector<std::string> preset_names() { return {"tiny", "diffusiongemma-26b-a4b"}; }

nlohmann::json preset_config(const std::string& name) {
  if (name == "tiny") return tiny();
  if (name == "diffusiongemma-26b-a4b") return released_26b();
  fail_config("unknown model preset '{}' (presets: tiny, diffusiongemma-26b-a4b)", name);
}

nlohmann::json default_generation_config(const nlohmann::json& config) {
  // The released checkpoint's generation_config.json (model.md §7.1).
  nlohmann::json g = {{"max_new_tokens", 256},
                      {"max_denoising_steps", 48},
                      {"sampler_config", {{"entropy_bound", 0.1}, {"_cls_name", "EntropyBoundSamplerConfig"}}},
                      {"t_min", 0.4},
                      {"t_max", 0.8},
                      {"stability_threshold", 1},
                      {"confidence_threshold", 0.005},
                      {"pad_token_id", 0},
                      {"bos_token_id", 2}};
  g["eos_token_id"] = config.contains("eos_token_id") ? config["eos_token_id"] : nlohmann::json::array({1});
  return g;
}

}  // namespace dg
