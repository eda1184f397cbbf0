// A whole model in memory from a Hugging Face directory (generation, tests): the configuration, the
// weights allocated by layers/ and filled through io/'s HfTensorReader, and the directory's JSON files.
// Training never does this: its ranks read only their own slices (parallel/fsdp.h).
#pragma once
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "io/hf_model.h"
#include "layers/model.h"

namespace dg {

struct HfModel {
  ModelConfig config;
  ModelWeights weights;               // f32, CPU
  std::vector<std::string> carried;   // HF names of the tensors kept but not used (vision tower, ...)
  nlohmann::json config_json;            // config.json as written (kept for writing the model back)
  nlohmann::json generation_config_json; // generation_config.json, or null when the directory has none
};

HfModel load_hf_model(const std::string& dir);

}  // namespace dg
