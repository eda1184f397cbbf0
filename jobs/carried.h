// The tensors a fine-tuning run carries without training them: every tensor of the input model that the
// text model does not use (the vision tower, its projector, ...: io/hf_names.h), or, for a run on a
// preset, the vision tower its config implies, initialised as HF would (layers/vision.h, as `dgemma init`
// writes it). Every checkpoint holds them under "carried/<HF name>" in their stored dtype, as `dgemma
// convert` stores them, and the export (export_checkpoint_to_hf) writes them back byte for byte.
// Where a checkpoint's copies come from: a fresh run reads them from the input model (or initialises
// them); a resumed run copies them from the checkpoint it resumed from, whatever mesh saved it -- or, for a
// checkpoint of an older dgemma that has none, from the input model again (with a warning).
// Each tensor is written whole by one rank; the tensors are spread over the ranks by size (the same plan on
// every rank, tensor_copy.h), so no rank holds more than its share.
#pragma once
#include <cstdint>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "io/checkpoint.h"
#include "layers/model_config.h"
#include "layers/vision.h"

namespace dg {

class CarriedTensors {
 public:
  // The carried tensors of a run, chosen as described above. `resumed`: the checkpoint resumed from, or
  // null; `model_dir`: the input HF model, or empty for a preset whose config is `config_json`. Initialised
  // tensors take tensor indices after the text model's (layers/init.h) and are stored as `init_dtype`.
  static CarriedTensors for_run(const CheckpointReader* resumed, const std::string& model_dir,
                                const nlohmann::json& config_json, const ModelConfig& c, std::uint64_t seed,
                                DType init_dtype);

  std::size_t count() const { return names_.size(); }
  std::uint64_t bytes() const;
  std::string describe() const;  // "16 tensors (1.4 MB) read from DIR", for the log

  // Writes this rank's share into a checkpoint being saved (rank and ranks of the saving world). A read
  // failure is a dg::Error naming the source and the tensor.
  void write(int rank, int ranks, CheckpointWriter& w) const;

 private:
  enum class Kind { HfModel, Checkpoint, Init };
  Kind kind_ = Kind::Init;
  std::string source_;                 // the HF directory, the step directory, or what initialises them
  std::vector<std::string> names_;     // HF names
  std::vector<std::uint64_t> sizes_;   // bytes, as stored
  std::vector<CarriedSpec> specs_;     // Init: what to initialise (names_ in the same order)
  std::uint64_t seed_ = 0, first_index_ = 0;
  DType init_dtype_ = DType::BF16;

  static CarriedTensors from_hf_model(const std::string& dir);
  static CarriedTensors from_checkpoint(const CheckpointReader& r);
  static CarriedTensors initialised(const VisionConfig& v, std::uint64_t seed, std::uint64_t first_index, DType dtype);
  std::vector<std::size_t> mine(int rank, int ranks) const;  // the indices this rank writes
};

}  // namespace dg
