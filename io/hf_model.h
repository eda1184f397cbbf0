// Reading a Hugging Face directory (config.json + model.safetensors or a sharded index) by native tensor
// name, through the name adapter of io/hf_names.h. Every tensor of the model must be present exactly
// once with the shape the config implies; tensors the model does not use are carried (listed), and any
// other tensor is an error naming the directory and the tensor. io/ builds no model: a job that wants
// the whole model in memory uses jobs/model_load.h.
#pragma once
#include <nlohmann/json.hpp>
#include <memory>
#include <string>
#include <vector>

#include "layers/model.h"

namespace dg {

// The model tensors of an HF directory read by native name, whole or as any element range of the native
// row-major flattening, straight from the mmap'ed safetensors files (converted to f32, the experts
// transposed one expert at a time): a rank of a sharded job reads only the slices it owns, and nothing
// builds the model. The constructor checks the directory as load_hf_model does (every tensor present once
// with its shape and a float dtype, carried tensors listed, unknown tensors an error).
class HfTensorReader {
 public:
  HfTensorReader(const std::string& dir, const ModelConfig& c);
  HfTensorReader(HfTensorReader&&) noexcept;
  ~HfTensorReader();
  // dst[0 .. end-begin) = elements [begin, end) of the native tensor `native` (shape from the config).
  // A NaN or Inf among them is a ConfigError naming the safetensors file, the tensor and the element.
  void read(const std::string& native, std::int64_t begin, std::int64_t end, float* dst) const;
  const std::vector<std::string>& carried() const;  // HF names

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

// A JSON file (strict parsing, io/strict_json.h), ConfigError naming the file when it is missing or
// malformed; a generation_config.json is also type-checked (check_generation_config, io/hf_config.h).
nlohmann::json read_json_file(const std::string& path);

}  // namespace dg
