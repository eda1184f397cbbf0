#include "io/hf_model.h"

#include <filesystem>
#include <cstring>
#include <fstream>
#include <sstream>
#include <unordered_map>

#include "io/hf_config.h"
#include "io/hf_names.h"
#include "io/data_check.h"
#include "io/safetensors.h"
#include "io/strict_json.h"
#include "io/transpose.h"

namespace dg {

nlohmann::json read_json_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) fail_config("cannot read {}", path);
  std::stringstream text;
  text << in.rdbuf();
  nlohmann::json j = parse_json_strict(text.str(), path);
  if (std::filesystem::path(path).filename() == "generation_config.json") check_generation_config(j, path);
  return j;
}

struct HfTensorReader::Impl {
  ShardedSafetensors files;
  struct Source {
    std::string hf;
    Shape shape;  // native
    bool transposed;
  };
  std::unordered_map<std::string, Source> by_native;
  std::vector<std::string> carried;
};

HfTensorReader::HfTensorReader(HfTensorReader&&) noexcept = default;
HfTensorReader::~HfTensorReader() = default;
const std::vector<std::string>& HfTensorReader::carried() const { return impl_->carried; }

HfTensorReader::HfTensorReader(const std::string& dir, const ModelConfig& c)
    : impl_(std::make_unique<Impl>(Impl{ShardedSafetensors::open(dir), {}, {}})) {
  const ShardedSafetensors& files = impl_->files;
  std::unordered_map<std::string, Shape> wanted;
  for (const ParamSpec& p : model_params(c)) wanted.emplace(p.name, p.shape);
  for (const std::string& hf : files.names()) {
    const HfName n = hf_to_native(hf);
    if (n.kind == HfName::Kind::Carried) {
      impl_->carried.push_back(hf);
      continue;
    }
    auto it = n.kind == HfName::Kind::Mapped ? wanted.find(n.name) : wanted.end();
    if (it == wanted.end())
      fail_config("{}: tensor '{}' is not part of a DiffusionGemma model with this config.json ({})", files.path(), hf,
                  c.summary());
    if (auto prev = impl_->by_native.find(n.name); prev != impl_->by_native.end())
      fail_config("{}: tensors '{}' and '{}' both map to {}", files.path(), prev->second.hf, hf, n.name);
    const SafetensorsEntry& e = files.entry(hf);
    if (!e.type || !is_float(*e.type))
      fail_config("{}: tensor '{}' has dtype {}; model weights must be F32, BF16 or F16", files.path(), hf, e.dtype);
    Shape expect = it->second;
    if (n.transposed) std::swap(expect[expect.size() - 1], expect[expect.size() - 2]);
    if (e.shape != expect)
      fail_config("{}: tensor '{}' has shape {}, the config implies {}", files.path(), hf, shape_str(e.shape),
                  shape_str(expect));
    impl_->by_native.emplace(n.name, Impl::Source{hf, it->second, n.transposed});
  }
  for (const auto& [native, shape] : wanted)
    if (!impl_->by_native.count(native))
      fail_config("{}: missing tensor '{}' (native {})", files.path(), native_to_hf(native).name, native);
}

void HfTensorReader::read(const std::string& native, std::int64_t begin, std::int64_t end, float* dst) const {
  const auto it = impl_->by_native.find(native);
  DG_CHECK(it != impl_->by_native.end(), "HfTensorReader: {} is not a model tensor", native);
  const Impl::Source& src = it->second;
  DG_CHECK(0 <= begin && begin <= end && end <= shape_numel(src.shape), "HfTensorReader: range [{}, {}) of {} {}", begin,
           end, native, shape_str(src.shape));
  const Tensor t = impl_->files.tensor(src.hf);
  const std::size_t es = dtype_size(t.dtype());
  auto* raw = static_cast<std::byte*>(t.raw());
  // f32 copy of `n` stored elements starting at element `at`.
  auto to_f32 = [&](std::int64_t at, Shape shape) { return Tensor::view_of(raw + at * static_cast<std::int64_t>(es), std::move(shape), t.dtype()).to(DType::F32); };
  // Weights are for compute: a NaN or Inf is refused here, naming the element in the stored (HF) order.
  auto check_finite = [&](const float* v, std::int64_t n, auto&& hf_index) {
    const NonFinite bad = find_non_finite(v, DType::F32, n);
    if (bad)
      fail_config("{}: tensor '{}': non-finite value {} at element {} (row-major, as stored); model weights must be "
                  "finite",
                  impl_->files.file_of(src.hf).path(), src.hf, bad.first_value, hf_index(bad.first));
  };
  if (!src.transposed) {
    if (end > begin) {
      std::memcpy(dst, to_f32(begin, {end - begin}).raw(), static_cast<std::size_t>(end - begin) * sizeof(float));
      check_finite(dst, end - begin, [&](std::int64_t i) { return begin + i; });
    }
    return;
  }
  // Native [.., a, b] is HF [.., b, a] transposed: one matrix (an expert) at a time.
  const std::int64_t a = src.shape[src.shape.size() - 2], b = src.shape.back(), mat = a * b;
  for (std::int64_t z = mat > 0 ? begin / mat : 0; mat > 0 && z * mat < end; ++z) {
    const Tensor hf = to_f32(z * mat, {b, a});
    Tensor nat = Tensor::empty({a, b}, DType::F32);
    transpose_last2(static_cast<const std::byte*>(hf.raw()), hf.shape(), sizeof(float), static_cast<std::byte*>(nat.raw()));
    const std::int64_t lo = std::max(begin, z * mat), hi = std::min(end, (z + 1) * mat);
    std::memcpy(dst + (lo - begin), nat.data<float>() + (lo - z * mat), static_cast<std::size_t>(hi - lo) * sizeof(float));
    check_finite(dst + (lo - begin), hi - lo, [&](std::int64_t i) {  // native [.., a, b] -> HF [.., b, a]
      const std::int64_t k = lo - z * mat + i;
      return z * mat + (k % b) * a + k / b;
    });
  }
}

}  // namespace dg
