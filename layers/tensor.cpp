#include "layers/tensor.h"

#include "layers/ops.h"

#include <cstdio>
#include <mutex>
#include <cstdlib>
#include <string_view>
#include <cstring>
#include <fmt/ranges.h>

namespace dg {

std::string shape_str(const Shape& s) { return fmt::format("[{}]", fmt::join(s, ", ")); }

std::int64_t shape_numel(const Shape& s) {
  std::int64_t n = 1;
  for (auto d : s) n *= d;
  return n;
}

// ---- strict-device mode ----------------------------------------------------------------------------

namespace {
int strict_state = -1;  // -1: not decided yet (environment)
thread_local int model_path_depth = 0;
std::map<std::string, std::int64_t>& reads() {
  static std::map<std::string, std::int64_t> r;
  return r;
}
}  // namespace

bool strict_device_mode() {
  if (strict_state < 0) {
    const char* e = std::getenv("DGEMMA_STRICT_DEVICE");
    strict_state = e != nullptr && std::string(e) == "1" ? 1 : 0;
  }
  return strict_state == 1;
}
void set_strict_device_mode(bool on) { strict_state = on ? 1 : 0; }
bool in_model_path() { return model_path_depth > 0; }
ModelPathScope::ModelPathScope() { ++model_path_depth; }
ModelPathScope::~ModelPathScope() { --model_path_depth; }
const std::map<std::string, std::int64_t>& host_reads() { return reads(); }
void reset_host_reads() { reads().clear(); }
void note_host_read(const char* name) {
  if (in_model_path()) ++reads()[name];
}

bool is_op_implementation(const char* file) {
  const std::string_view f(file);
  return f.find("/layers/cpu/") != std::string_view::npos || f.find("/layers/cuda/") != std::string_view::npos ||
         f.ends_with("/layers/tensor.cpp") || f.ends_with("/layers/gemm.cpp");
}

void strict_device_violation(const Tensor& t, const std::source_location& where) {
  std::fprintf(stderr,
               "dgemma: strict-device mode: host access to device-resident tensor %s at %s:%u (%s), outside an op "
               "implementation\n",
               t.describe().c_str(), where.file_name(), static_cast<unsigned>(where.line()), where.function_name());
  std::fflush(stderr);
  std::abort();
}

Tensor read_to_host(const Tensor& t, const char* name) {
  note_host_read(name);
  Tensor out = Tensor::empty(t.shape(), t.dtype(), Device::CPU);
  out.resident_ = false;
  copy_bytes(out.raw(), Device::CPU, t.raw(), t.device(), t.nbytes());
  return out;
}

// ---- the host pool of model-path tensors --------------------------------------------------------------

namespace {
struct HostPool {
  std::mutex mu;
  std::vector<std::vector<void*>> free_lists = std::vector<std::vector<void*>>(64);
  AllocationStats stats;
};
HostPool& pool() {
  static HostPool* p = new HostPool;  // never destroyed: blocks may be freed during static destruction
  return *p;
}
int size_class(std::size_t bytes) {
  int c = 6;  // 64 bytes
  while ((std::size_t{1} << c) < bytes) ++c;
  return c;
}
void* system_alloc(std::size_t bytes) {
  void* p = std::aligned_alloc(64, (bytes + 63) / 64 * 64);
  if (!p) fail("out of host memory allocating {} bytes", bytes);
  return p;
}
std::shared_ptr<void> pooled_alloc(std::size_t bytes) {
  HostPool& hp = pool();
  const int c = size_class(bytes);
  void* p = nullptr;
  {
    std::lock_guard<std::mutex> lock(hp.mu);
    auto& list = hp.free_lists[static_cast<std::size_t>(c)];
    if (!list.empty()) {
      p = list.back();
      list.pop_back();
      ++hp.stats.pool_hits;
      hp.stats.cached_bytes -= static_cast<std::int64_t>(std::size_t{1} << c);
    } else {
      ++hp.stats.system_allocations;
    }
  }
  if (p == nullptr) p = system_alloc(std::size_t{1} << c);
  return std::shared_ptr<void>(p, [c](void* q) {
    HostPool& h = pool();
    std::lock_guard<std::mutex> lock(h.mu);
    h.free_lists[static_cast<std::size_t>(c)].push_back(q);
    h.stats.cached_bytes += static_cast<std::int64_t>(std::size_t{1} << c);
  });
}
}  // namespace

AllocationStats allocation_stats() {
  std::lock_guard<std::mutex> lock(pool().mu);
  return pool().stats;
}

static void check_shape(const Shape& s) {
  for (auto d : s)
    if (d < 0) fail("invalid tensor shape {}: negative dimension", shape_str(s));
}

Tensor Tensor::empty(Shape shape, DType dtype, Device device) {
  check_shape(shape);
  Tensor t;
  t.shape_ = std::move(shape);
  t.dtype_ = dtype;
  t.device_ = device;
  const std::size_t bytes = std::max<std::size_t>(t.nbytes(), 1);
  if (device == Device::CPU && in_model_path()) {
    t.storage_ = pooled_alloc(bytes);
  } else if (device == Device::CPU) {
    void* p = std::aligned_alloc(64, (bytes + 63) / 64 * 64);
    if (!p) fail("out of host memory allocating {} bytes for a {} tensor", bytes, shape_str(t.shape_));
    t.storage_ = std::shared_ptr<void>(p, [](void* q) { std::free(q); });
  } else {
    t.storage_ = std::shared_ptr<void>(cuda_malloc(bytes), [](void* q) { cuda_free(q); });
  }
  t.data_ = t.storage_.get();
  t.resident_ = strict_device_mode() && in_model_path();
  return t;
}

Tensor Tensor::zeros(Shape shape, DType dtype, Device device) {
  Tensor t = empty(std::move(shape), dtype, device);
  t.zero_();
  return t;
}

Tensor Tensor::host_empty(Shape shape, DType dtype) {
  Tensor t = empty(std::move(shape), dtype, Device::CPU);
  t.resident_ = false;
  return t;
}

Tensor Tensor::view_of(void* data, Shape shape, DType dtype, Device device) {
  check_shape(shape);
  Tensor t;
  t.data_ = data;
  t.shape_ = std::move(shape);
  t.dtype_ = dtype;
  t.device_ = device;
  return t;
}

Tensor Tensor::from(Shape shape, const std::vector<float>& values) {
  Tensor t = empty(std::move(shape), DType::F32);
  DG_CHECK(static_cast<std::int64_t>(values.size()) == t.numel(), "{} values for shape {}", values.size(),
           shape_str(t.shape_));
  if (!values.empty()) std::memcpy(t.data_, values.data(), t.nbytes());
  return t;
}

Tensor Tensor::from_i32(Shape shape, const std::vector<std::int32_t>& values) {
  Tensor t = empty(std::move(shape), DType::I32);
  DG_CHECK(static_cast<std::int64_t>(values.size()) == t.numel(), "{} values for shape {}", values.size(),
           shape_str(t.shape_));
  if (!values.empty()) std::memcpy(t.data_, values.data(), t.nbytes());
  return t;
}

std::int64_t Tensor::size(int dim) const {
  const int d = dim < 0 ? dim + ndim() : dim;
  DG_CHECK(d >= 0 && d < ndim(), "dim {} out of range for {}", dim, describe());
  return shape_[d];
}

Tensor Tensor::reshape(Shape shape) const {
  int infer = -1;
  std::int64_t known = 1;
  for (int i = 0; i < static_cast<int>(shape.size()); ++i) {
    if (shape[i] == -1) {
      DG_CHECK(infer < 0, "reshape {} -> {}: more than one -1", shape_str(shape_), shape_str(shape));
      infer = i;
    } else {
      known *= shape[i];
    }
  }
  if (infer >= 0) {
    DG_CHECK(known > 0 && numel() % known == 0, "reshape {} -> {}", shape_str(shape_), shape_str(shape));
    shape[infer] = numel() / known;
  }
  DG_CHECK(shape_numel(shape) == numel(), "reshape {} -> {}: element counts differ", shape_str(shape_),
           shape_str(shape));
  Tensor t = *this;
  t.shape_ = std::move(shape);
  return t;
}

Tensor Tensor::rows(std::int64_t begin, std::int64_t end) const {
  DG_CHECK(ndim() >= 1 && 0 <= begin && begin <= end && end <= shape_[0], "rows [{}, {}) of {}", begin, end,
           describe());
  Tensor t = *this;
  const std::int64_t row = shape_[0] ? numel() / shape_[0] : 0;
  t.data_ = static_cast<char*>(data_) + static_cast<std::size_t>(begin * row) * dtype_size(dtype_);
  t.shape_[0] = end - begin;
  return t;
}

Tensor Tensor::view_flat(std::int64_t offset, Shape shape) const {
  check_shape(shape);
  DG_CHECK(offset >= 0 && offset + shape_numel(shape) <= numel(), "view_flat [{}, +{}) of {}", offset,
           shape_numel(shape), describe());
  Tensor t = *this;
  t.data_ = static_cast<char*>(data_) + static_cast<std::size_t>(offset) * dtype_size(dtype_);
  t.shape_ = std::move(shape);
  return t;
}

Tensor Tensor::to(Device device) const {
  Tensor t = empty(shape_, dtype_, device);
  copy_bytes(t.data_, device, data_, device_, nbytes());
  return t;
}

static float load_as_f32(const void* p, DType t, std::int64_t i) {
  switch (t) {
    case DType::F32: return static_cast<const float*>(p)[i];
    case DType::BF16: return bf16_bits_to_f32(static_cast<const std::uint16_t*>(p)[i]);
    case DType::F16: return f16_bits_to_f32(static_cast<const std::uint16_t*>(p)[i]);
    case DType::I32: return static_cast<float>(static_cast<const std::int32_t*>(p)[i]);
    case DType::I64: return static_cast<float>(static_cast<const std::int64_t*>(p)[i]);
  }
  return 0.f;
}

Tensor Tensor::to(DType dtype) const {
  if (dtype == dtype_) return clone();
  if (!is_cpu()) {
    Tensor t = empty(shape_, dtype, device_);
    cuda::convert(*this, t);
    return t;
  }
  Tensor t = empty(shape_, dtype, Device::CPU);
  const std::int64_t n = numel();
  const bool ints = !is_float(dtype_) && !is_float(dtype);
  for (std::int64_t i = 0; i < n; ++i) {
    if (ints) {  // integer <-> integer without going through float
      const std::int64_t v = dtype_ == DType::I32 ? static_cast<const std::int32_t*>(data_)[i]
                                                  : static_cast<const std::int64_t*>(data_)[i];
      if (dtype == DType::I32) static_cast<std::int32_t*>(t.data_)[i] = static_cast<std::int32_t>(v);
      else static_cast<std::int64_t*>(t.data_)[i] = v;
      continue;
    }
    const float v = load_as_f32(data_, dtype_, i);
    switch (dtype) {
      case DType::F32: static_cast<float*>(t.data_)[i] = v; break;
      case DType::BF16: static_cast<std::uint16_t*>(t.data_)[i] = f32_to_bf16_bits(v); break;
      case DType::F16: static_cast<std::uint16_t*>(t.data_)[i] = f32_to_f16_bits(v); break;
      case DType::I32: static_cast<std::int32_t*>(t.data_)[i] = static_cast<std::int32_t>(v); break;
      case DType::I64: static_cast<std::int64_t*>(t.data_)[i] = static_cast<std::int64_t>(v); break;
    }
  }
  return t;
}

void Tensor::copy_from(const Tensor& src) {
  DG_CHECK(src.shape_ == shape_ && src.dtype_ == dtype_, "copy {} into {}", src.describe(), describe());
  copy_bytes(data_, device_, src.data_, src.device_, nbytes());
}

void Tensor::zero_() {
  if (device_ == Device::CPU) {
    if (nbytes()) std::memset(data_, 0, nbytes());
  } else {
    cuda_memset_zero(data_, nbytes());
  }
}

std::string Tensor::describe() const {
  return fmt::format("{}{} {}{}", dtype_name(dtype_), shape_str(shape_), device_name(device_),
                     owned() ? "" : " (view)");
}

}  // namespace dg
