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

#include "io/safetensors.h"
#include "layers/model.h"

namespace dg {

struct HfOutTensor {
  std::string name;   // HF name
  std::string dtype;  // safetensors dtype string ("BF16", "F32", or any for carried tensors)
  Shape shape;
  std::function<void(std::byte* dst, std::size_t nbytes)> fill;
};

struct HfDirOptions {
  std::uint64_t max_shard_size = 50'000'000'000ull;  // save_pretrained's default "50GB" (transformers 5)
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

// ---- shard layouts ------------------------------------------------------------------------------------
// How the safetensors files of an HF directory are laid out, beyond the tensors they hold.
struct HfShardLayout {
  ShardPlan plan;                                     // file names, each file's tensors (in data order), weight map
  std::vector<SafetensorsWriteOptions> file_options;  // per file: __metadata__, order, verbatim header
  std::string index_text;                             // model.safetensors.index.json; empty: one file, no index
};

// save_pretrained's layout (transformers 5.23, huggingface_hub 2.4): the tensors in
// DiffusionGemmaForBlockDiffusion.state_dict() order (hf_state_dict_order), split by huggingface_hub's
// rule (plan_shards), each file sorted by the safetensors writer with __metadata__ {"format": "pt"}, and an
// index (only when sharded) whose metadata is {"total_parameters": num_parameters(), "total_size": data
// bytes} -- num_parameters() counts parameters, not the saved buffers (hf_num_parameters).
HfShardLayout save_pretrained_layout(std::vector<TensorSpec> tensors, std::uint64_t max_shard_size);
// The order in which DiffusionGemmaForBlockDiffusion.state_dict() lists these HF tensors (stable: names it
// does not know keep their relative order, after the known ones of their group).
void hf_state_dict_order(std::vector<TensorSpec>& tensors);
// The elements of the tensors that are parameters: all but the persistent buffers (the layer_scalar buffers;
// the vision tower's std_bias / std_scale and the clip bounds input_min / input_max / output_min / output_max).
std::uint64_t hf_num_parameters(const std::vector<TensorSpec>& tensors);

// The layout of a set of files as read (the manifest section "hf_layout" of `dgemma convert`): file names
// in order, each file's tensors ([name, dtype] in data order) and __metadata__, the index's metadata; the
// header and index texts verbatim where dgemma's writer would not reproduce them byte for byte.
nlohmann::json hf_layout_of(const ShardedSafetensors& files);
// The recorded layout for exactly `tensors` (their dtypes may differ from the recorded ones: then the
// headers are generated and the index's total_size is recomputed). nullopt, with the reason in `why`, when
// the recorded files do not hold exactly these tensors; ConfigError (naming `what`) for a malformed record.
std::optional<HfShardLayout> recorded_hf_layout(const nlohmann::json& layout, const std::vector<TensorSpec>& tensors,
                                                const std::string& what, std::string& why);

}  // namespace dg
