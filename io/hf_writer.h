// Writing a Hugging Face model directory: config.json, generation_config.json, model.safetensors (or
// shards + model.safetensors.index.json, split at max_shard_size like save_pretrained) and any extra
// files (tokenizer). Tensors are produced one at a time by a fill callback, so a model larger than
// memory can be written. Everything is written into `<dir>.tmp` and renamed to `<dir>` when complete:
// a failed run leaves no directory that looks like a model, and an existing `<dir>` is refused unless
// overwrite is set (then it is replaced only after the new one is complete).
#pragma once
#include <cstddef>
#include <cstdint>
#include <functional>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <vector>

#include "layers/model.h"

namespace dg {

struct HfOutTensor {
  std::string name;   // HF name
  std::string dtype;  // safetensors dtype string ("BF16", "F32", or any for carried tensors)
  Shape shape;
  std::function<void(std::byte* dst, std::size_t nbytes)> fill;
};

struct HfDirOptions {
  std::uint64_t max_shard_size = 5'000'000'000ull;  // save_pretrained's default "5GB"
  bool overwrite = false;
  std::vector<std::string> extra_files;             // copied into the directory (tokenizer files, ...)
  std::vector<std::pair<std::string, std::string>> extra_contents;  // {file name, bytes} written as well
  std::optional<std::uint64_t> total_parameters;    // for the index; default: elements of all tensors
};

void write_hf_dir(const std::string& dir, const nlohmann::json& config, const nlohmann::json* generation_config,
                  const std::vector<HfOutTensor>& tensors, const HfDirOptions& opts);

// The HF tensors of an in-memory model (f32 weights) stored as `dtype` (F32 or BF16), transposed and
// renamed through io/hf_names.h.
std::vector<HfOutTensor> hf_tensors_of(const ModelConfig& c, const ModelWeights& w, DType dtype);

// Converts f32 values (optionally transposing the last two dims of `shape`) into dst as `dtype`.
void encode_f32(const float* src, const Shape& src_shape, bool transpose, DType dtype, std::byte* dst);

}  // namespace dg
