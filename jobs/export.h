// Writing a checkpoint out as a Hugging Face directory (the h5 -> hf direction of `dgemma convert`, also
// the final export of `dgemma sft`): collective over `world`; rank 0 creates the files, every rank writes
// its share of the tensors into them at their offsets, each streamed from the checkpoint alone (no rank
// holds the model).
#pragma once
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "parallel/comm.h"

namespace dg {

struct HfExportOptions {
  std::string role = "auto";   // checkpoint role of the model tensors: param, master, or auto
  std::string dtype = "keep";  // keep, bf16 or f32
  std::uint64_t max_shard_size = 50'000'000'000ull;  // save_pretrained's default "50GB"
  bool overwrite = false;
  // Write the safetensors files the checkpoint's model came in (its "hf_layout" section, recorded by
  // `dgemma convert --from hf`: file names, each file's tensors and metadata, the index) when it holds
  // exactly the exported tensors; otherwise, or when false, as save_pretrained would (max_shard_size).
  bool keep_layout = true;
  std::vector<std::string> extra_files;                              // copied (tokenizer files)
  std::vector<std::pair<std::string, std::string>> extra_contents;  // {file name, bytes}
  bool report = true;              // the closing rate line
  bool set_config_dtype = false;  // write config.json's "dtype" as the exported weights' (bf16/f32 only)
};

int export_checkpoint_to_hf(Comm& world, const std::string& checkpoint, const std::string& out,
                            const HfExportOptions& o);

}  // namespace dg
