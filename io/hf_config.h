// Hugging Face config.json <-> ModelConfig. Accepts the `diffusion_gemma` layout (nested text_config,
// top-level canvas_length and eos_token_id) and a bare `diffusion_gemma_text` config. Keys HF omits
// because they equal the class defaults (save_pretrained writes only the differences) take the
// defaults of model.md §1.1; keys without a default, wrong types and inconsistent values are
// ConfigErrors naming the key and the file. Unknown keys are tolerated. Every integer is range-checked
// into its target type (io/strict_json.h): nothing is narrowed silently, and 1e3 is not an integer.
#pragma once
#include <nlohmann/json.hpp>
#include <optional>
#include <string>

#include "layers/model_config.h"
#include "layers/vision.h"

namespace dg {

ModelConfig parse_model_config(const nlohmann::json& j, const std::string& where);
ModelConfig load_model_config(const std::string& path);  // a config.json file or an HF model directory

// The vision tower a `diffusion_gemma` config.json implies (layers/vision.h): its vision_config (model_type
// gemma4_vision) with HF Gemma4VisionConfig's defaults for absent keys -- an absent vision_config is the
// default tower, as DiffusionGemmaConfig builds one -- and the top-level initializer_range for the
// projector; `text` gives the projector's output width. nullopt for a bare diffusion_gemma_text config
// (no vision tower). ConfigError naming the key and `where` for a wrong type, a non-positive size or another
// vision model_type.
std::optional<VisionConfig> parse_vision_config(const nlohmann::json& top, const ModelConfig& text,
                                                const std::string& where);

// Type and range checks of the generation_config.json keys dgemma reads (max_new_tokens,
// max_denoising_steps, stability_threshold, t_min, t_max, confidence_threshold, pad/bos/eos_token_id,
// sampler_config.entropy_bound): ConfigError naming `file`, the key and what is expected. Null or absent
// keys are fine (the defaults apply); other keys are tolerated. read_json_file (io/hf_model.h) applies it
// to every file named generation_config.json.
void check_generation_config(const nlohmann::json& j, const std::string& file);

}  // namespace dg
