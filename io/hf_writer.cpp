#include "io/hf_writer.h"

#include <cstring>
#include <filesystem>
#include <fstream>

#include "io/atomic_file.h"
#include "io/hf_names.h"
#include "io/safetensors.h"
#include "io/transpose.h"

namespace dg {

namespace fs = std::filesystem;

namespace {

void encode_f32_plain(const float* src, std::int64_t n, DType dtype, std::byte* dst) {
  for (std::int64_t i = 0; i < n; ++i) {
    const float v = src[i];
    switch (dtype) {
      case DType::F32: std::memcpy(dst + 4 * i, &v, 4); break;
      case DType::BF16: {
        const std::uint16_t h = f32_to_bf16_bits(v);
        std::memcpy(dst + 2 * i, &h, 2);
        break;
      }
      case DType::F16: {
        const std::uint16_t h = f32_to_f16_bits(v);
        std::memcpy(dst + 2 * i, &h, 2);
        break;
      }
      default: fail("encode_f32: unsupported output dtype {}", dtype_name(dtype));
    }
  }
}

}  // namespace

void encode_f32(const float* src, const Shape& shape, bool transpose, DType dtype, std::byte* dst) {
  const std::int64_t n = shape_numel(shape);
  if (!transpose || n == 0) return encode_f32_plain(src, n, dtype, dst);
  // Encode in the source order, then the one transpose of io/transpose.h ([.., a, b] -> [.., b, a]).
  std::vector<std::byte> encoded(static_cast<std::size_t>(n) * dtype_size(dtype));
  encode_f32_plain(src, n, dtype, encoded.data());
  transpose_last2(encoded.data(), shape, dtype_size(dtype), dst);
}

std::vector<HfOutTensor> hf_tensors_of(const ModelConfig& c, const ModelWeights& w, DType dtype) {
  std::vector<HfOutTensor> out;
  const std::string ds(safetensors_dtype(dtype).name);
  for (const NamedTensor& t : model_tensors(c, w)) {
    const HfName n = native_to_hf(t.name);
    Shape shape = t.tensor.shape();
    if (n.transposed) std::swap(shape[shape.size() - 1], shape[shape.size() - 2]);
    const Tensor src = t.tensor;
    out.push_back({n.name, ds, shape, [src, n, dtype](std::byte* dst, std::size_t) {
                     encode_f32(src.data<float>(), src.shape(), n.transposed, dtype, dst);
                   }});
  }
  return out;
}

void write_hf_dir(const std::string& dir, const nlohmann::json& config, const nlohmann::json* generation_config,
                  const std::vector<HfOutTensor>& tensors, const HfDirOptions& opts) {
  const fs::path final_dir = fs::path(dir).lexically_normal();
  if (final_dir.empty() || final_dir.filename().empty()) fail_config("output directory '{}' is not a directory name", dir);
  if (fs::exists(final_dir) && !opts.overwrite)
    fail_config("output directory {} already exists (use --overwrite to replace it)", final_dir.string());
  const fs::path parent = final_dir.has_parent_path() ? final_dir.parent_path() : fs::path(".");
  if (!fs::is_directory(parent)) fail_config("the parent of the output directory, {}, does not exist", parent.string());
  const fs::path tmp = final_dir.string() + ".tmp";
  std::error_code ec;
  fs::remove_all(tmp, ec);  // a leftover from a crashed run
  if (!fs::create_directory(tmp, ec)) fail("cannot create {}: {}", tmp.string(), ec.message());

  write_file_atomic((tmp / "config.json").string(), config.dump(2) + "\n", false);
  if (generation_config)
    write_file_atomic((tmp / "generation_config.json").string(), generation_config->dump(2) + "\n", false);
  for (const std::string& f : opts.extra_files) {
    std::ifstream in(f, std::ios::binary);
    if (!in) fail_config("cannot read {}", f);
    std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    write_file_atomic((tmp / fs::path(f).filename()).string(), bytes, false);
  }

  for (const auto& [name, bytes] : opts.extra_contents) write_file_atomic((tmp / name).string(), bytes, false);

  std::vector<TensorSpec> specs;
  std::uint64_t params = 0;
  for (const HfOutTensor& t : tensors) {
    specs.push_back({t.name, t.dtype, t.shape});
    params += static_cast<std::uint64_t>(shape_numel(t.shape));
  }
  ShardedSafetensorsWriter writer(tmp.string(), specs, opts.max_shard_size);
  std::vector<std::byte> buf;
  for (const HfOutTensor& t : tensors) {
    const SafetensorsDType* d = find_safetensors_dtype(t.dtype);
    DG_CHECK(d != nullptr, "unknown dtype {} for {}", t.dtype, t.name);
    const std::size_t nbytes = static_cast<std::size_t>((shape_numel(t.shape) * d->bits + 7) / 8);
    buf.assign(nbytes, std::byte{0});
    t.fill(buf.data(), nbytes);
    writer.write(t.name, buf.data(), nbytes);
  }
  buf.clear();
  buf.shrink_to_fit();
  writer.finish(opts.total_parameters ? opts.total_parameters : std::optional<std::uint64_t>(params));

  if (fs::exists(final_dir)) {  // overwrite: swap in the complete new directory, then drop the old one
    const fs::path old = final_dir.string() + ".old";
    fs::remove_all(old, ec);
    fs::rename(final_dir, old);
    fs::rename(tmp, final_dir);
    fs::remove_all(old, ec);
  } else {
    fs::rename(tmp, final_dir);
  }
  fsync_directory(parent.string());
}

}  // namespace dg
