// CarriedTensors (see carried.h).
#include "jobs/carried.h"

#include <algorithm>
#include <numeric>

#include "io/hf_config.h"
#include "io/hf_names.h"
#include "io/hf_writer.h"
#include "io/safetensors.h"
#include "jobs/log.h"
#include "jobs/tensor_copy.h"
#include "layers/init.h"
#include "layers/model.h"

namespace dg {

namespace {

constexpr std::string_view kRole = "carried";

bool is_carried_key(const std::string& key) { return key.rfind(std::string(kRole) + "/", 0) == 0; }

std::int64_t piece_elements(DType t) {
  return std::max<std::int64_t>(1, kPieceBytes / static_cast<std::int64_t>(dtype_size(t)));
}

}  // namespace

CarriedTensors CarriedTensors::from_hf_model(const std::string& dir) {
  CarriedTensors t;
  t.kind_ = Kind::HfModel;
  t.source_ = dir;
  const ShardedSafetensors files = ShardedSafetensors::open(dir);
  for (const std::string& hf : files.names()) {
    if (hf_to_native(hf).kind != HfName::Kind::Carried) continue;
    checkpoint_dtype(files, hf);  // refused at start, not at the first checkpoint
    t.names_.push_back(hf);
    t.sizes_.push_back(files.entry(hf).nbytes());
  }
  return t;
}

CarriedTensors CarriedTensors::from_checkpoint(const CheckpointReader& r) {
  CarriedTensors t;
  t.kind_ = Kind::Checkpoint;
  t.source_ = r.dir();
  for (const auto& [key, tensor] : r.manifest().tensors) {
    if (!is_carried_key(key)) continue;
    t.names_.push_back(key.substr(kRole.size() + 1));
    t.sizes_.push_back(static_cast<std::uint64_t>(shape_numel(tensor.shape)) * dtype_size(tensor.dtype));
  }
  return t;
}

CarriedTensors CarriedTensors::initialised(const VisionConfig& v, std::uint64_t seed, std::uint64_t first_index,
                                           DType dtype) {
  CarriedTensors t;
  t.kind_ = Kind::Init;
  t.source_ = "the preset's vision_config";
  t.specs_ = vision_params(v);
  for (const CarriedSpec& s : t.specs_) {
    t.names_.push_back(s.name);
    t.sizes_.push_back(static_cast<std::uint64_t>(shape_numel(s.shape)) * dtype_size(dtype));
  }
  t.seed_ = seed;
  t.first_index_ = first_index;
  t.init_dtype_ = dtype;
  return t;
}

CarriedTensors CarriedTensors::for_run(const CheckpointReader* resumed, const std::string& model_dir,
                                       const nlohmann::json& config_json, const ModelConfig& c, std::uint64_t seed,
                                       DType init_dtype) {
  if (resumed) {
    CarriedTensors t = from_checkpoint(*resumed);
    if (t.count() > 0) return t;
  }
  CarriedTensors t;
  if (!model_dir.empty()) {
    t = from_hf_model(model_dir);
  } else {
    const std::optional<VisionConfig> v = parse_vision_config(config_json, c, "the preset's config");
    if (v) t = initialised(*v, seed, model_params(c).size(), init_dtype);
  }
  if (resumed && t.count() > 0)
    log::warn("sft: {} holds no carried tensors (saved by an older dgemma): its checkpoints and export take them "
              "from the source again: {}", resumed->dir(), t.describe());
  return t;
}

std::string CarriedTensors::describe() const {
  const char* how = kind_ == Kind::HfModel      ? "read from the input model"
                    : kind_ == Kind::Checkpoint ? "copied from"
                                                : "initialised as HF would from";
  return fmt::format("{} tensors ({:.1f} MB) {} {}", count(), static_cast<double>(bytes()) * 1e-6, how, source_);
}

std::uint64_t CarriedTensors::bytes() const { return std::accumulate(sizes_.begin(), sizes_.end(), std::uint64_t{0}); }

std::vector<std::size_t> CarriedTensors::mine(int rank, int ranks) const {
  const std::vector<int> owner = spread_over_ranks(sizes_, ranks);
  std::vector<std::size_t> out;
  for (std::size_t i = 0; i < owner.size(); ++i)
    if (owner[i] == rank) out.push_back(i);
  return out;
}

void CarriedTensors::write(int rank, int ranks, CheckpointWriter& w) const {
  const std::vector<std::size_t> own = mine(rank, ranks);
  if (own.empty()) return;
  auto key = [&](std::size_t i) { return checkpoint_key(kRole, names_[i]); };
  switch (kind_) {
    case Kind::HfModel: {
      const ShardedSafetensors files = ShardedSafetensors::open(source_);
      for (std::size_t i : own) {
        NonFiniteScan unused;  // carried as they are: their values are not dgemma's to judge
        copy_hf_tensor(files, names_[i], false, w, key(i), unused);
      }
      return;
    }
    case Kind::Checkpoint: {  // streamed in pieces, checksum-verified by the reader
      CheckpointReader r = CheckpointReader::open(source_);
      for (std::size_t i : own) {
        const CheckpointTensor& t = r.tensor(key(i));
        w.add_pieces(key(i), t.shape, t.dtype, piece_elements(t.dtype),
                     [&](std::int64_t first, std::int64_t n, void* dst) {
                       Tensor out = Tensor::view_of(dst, {n}, t.dtype);
                       r.read(key(i), Slice::range(first, first + n), out);
                     });
      }
      return;
    }
    case Kind::Init:
      for (std::size_t i : own) {
        const CarriedSpec& s = specs_[i];
        std::vector<float> buf;
        w.add_pieces(key(i), s.shape, init_dtype_, piece_elements(init_dtype_),
                     [&](std::int64_t first, std::int64_t n, void* dst) {
                       buf.resize(static_cast<std::size_t>(n));
                       init_carried(s, seed_, first_index_ + i, first, n, buf.data());
                       encode_f32(buf.data(), {n}, false, init_dtype_, static_cast<std::byte*>(dst));
                     });
      }
      return;
  }
}

}  // namespace dg
