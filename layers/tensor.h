// Tensor: a dense, contiguous, row-major block of elements with a shape, an element type and a
// device. A tensor either owns its storage (shared by the views made from it) or is a view of memory
// owned elsewhere (a checkpoint buffer, an mmap'ed safetensors file, a flat FSDP unit).
#pragma once
#include <cstdint>
#include <initializer_list>
#include <map>
#include <memory>
#include <source_location>
#include <string>
#include <vector>

#include "layers/device.h"
#include "layers/dtype.h"
#include "layers/error.h"

namespace dg {

using Shape = std::vector<std::int64_t>;

// ---- Strict-device mode (DESIGN.md "Runtime") ------------------------------------------------------
// A CPU run that behaves as if the model's tensors lived on a GPU: inside a step (a ModelPathScope),
// tensors allocated there or marked device-resident refuse host access (Tensor::data) from anywhere but
// the op implementations (layers/cpu/, layers/cuda/) and abort naming the call site. Host reads that a
// step needs go through read_to_host(t, name), which copies and counts them by name. Switched on by
// the environment variable DGEMMA_STRICT_DEVICE=1 (read once) or set_strict_device_mode. This is how
// CPU tests prove that the GPU path has no hidden host round trips.
bool strict_device_mode();
void set_strict_device_mode(bool on);
bool in_model_path();
class ModelPathScope {
 public:
  ModelPathScope();
  ~ModelPathScope();
  ModelPathScope(const ModelPathScope&) = delete;
  ModelPathScope& operator=(const ModelPathScope&) = delete;
};
// Host memory of the tensors allocated inside a step comes from a caching pool (size classes of powers of
// two from 64 bytes): a block freed inside or after a step returns to its class's free list and serves
// the next request of that class, so once the first steps have warmed the pool a step allocates nothing
// from the system. Outside steps (loading, conversion, checkpoints) tensors use the system allocator
// directly and give their memory back. (The CUDA backend's counterpart is the stream-ordered
// cudaMallocAsync pool.)
struct AllocationStats {
  std::int64_t system_allocations = 0;  // blocks the pool had to take from the system
  std::int64_t pool_hits = 0;           // requests served from a free list
  std::int64_t cached_bytes = 0;        // held by the pool's free lists now
};
AllocationStats allocation_stats();

// Host reads inside model-path scopes, by name (reset_host_reads clears them).
const std::map<std::string, std::int64_t>& host_reads();
void reset_host_reads();
void note_host_read(const char* name);

std::string shape_str(const Shape& s);  // "[2, 3, 4]"
std::int64_t shape_numel(const Shape& s);

class Tensor {
 public:
  Tensor() = default;

  // Owned, uninitialised / zero-filled storage.
  static Tensor empty(Shape shape, DType dtype, Device device = Device::CPU);
  static Tensor zeros(Shape shape, DType dtype, Device device = Device::CPU);
  // Host memory the host code fills (inputs staged for a step): never device-resident.
  static Tensor host_empty(Shape shape, DType dtype);
  // A view of memory someone else keeps alive.
  static Tensor view_of(void* data, Shape shape, DType dtype, Device device = Device::CPU);
  // CPU f32 / i32 tensors from values (tests and small tables).
  static Tensor from(Shape shape, const std::vector<float>& values);
  static Tensor from_i32(Shape shape, const std::vector<std::int32_t>& values);

  bool defined() const { return data_ != nullptr || numel() == 0; }
  const Shape& shape() const { return shape_; }
  int ndim() const { return static_cast<int>(shape_.size()); }
  std::int64_t size(int dim) const;  // negative dims count from the end
  std::int64_t numel() const { return shape_numel(shape_); }
  std::size_t nbytes() const { return static_cast<std::size_t>(numel()) * dtype_size(dtype_); }
  DType dtype() const { return dtype_; }
  Device device() const { return device_; }
  bool is_cpu() const { return device_ == Device::CPU; }
  bool owned() const { return static_cast<bool>(storage_); }

  void* raw() const { return data_; }
  // Checked against dtype (float<->F32, std::uint16_t<->BF16/F16, int32/int64) and, in strict-device
  // mode, against host access to a device-resident tensor outside op implementations.
  template <class T>
  T* data(std::source_location where = std::source_location::current()) const;

  // Strict-device mode: this tensor (and every view of it) counts as living on the device.
  void mark_device_resident() { resident_ = true; }
  bool device_resident() const { return resident_; }
  friend Tensor read_to_host(const Tensor& t, const char* name);

  // Same storage, other shape (element counts must agree; -1 infers one dimension).
  Tensor reshape(Shape shape) const;
  // Rows [begin, end) of the first dimension, sharing storage.
  Tensor rows(std::int64_t begin, std::int64_t end) const;
  // Elements [offset, offset + numel(shape)) of the row-major flattening as a tensor of `shape`, sharing
  // storage (and device residency).
  Tensor view_flat(std::int64_t offset, Shape shape) const;

  // Copies (new owned storage).
  Tensor to(Device device) const;
  Tensor to(DType dtype) const;  // CPU only; float<->float conversions round to nearest even
  Tensor clone() const { return to(device_); }
  void copy_from(const Tensor& src);  // same shape and dtype, any devices
  void zero_();

  std::string describe() const;  // "bf16[2, 3] cuda (view)"

 private:
  std::shared_ptr<void> storage_;
  void* data_ = nullptr;
  Shape shape_;
  DType dtype_ = DType::F32;
  Device device_ = Device::CPU;
  bool resident_ = false;
};

// Aborts the process (strict-device mode): host access to a device-resident tensor at `where`.
[[noreturn]] void strict_device_violation(const Tensor& t, const std::source_location& where);
// Whether host code at `file` is an op implementation (layers/cpu/, layers/cuda/, layers/tensor.cpp).
bool is_op_implementation(const char* file);

// A host copy of t (any device), counted as the named host read when inside a step.
Tensor read_to_host(const Tensor& t, const char* name);

template <class T>
T* Tensor::data(std::source_location where) const {
  if (resident_ && strict_device_mode() && in_model_path() && !is_op_implementation(where.file_name()))
    strict_device_violation(*this, where);
  if constexpr (std::is_same_v<T, float>)
    DG_CHECK(dtype_ == DType::F32, "tensor {} accessed as f32", describe());
  else if constexpr (std::is_same_v<T, std::uint16_t>)
    DG_CHECK(dtype_ == DType::BF16 || dtype_ == DType::F16, "tensor {} accessed as 16-bit", describe());
  else if constexpr (std::is_same_v<T, std::int32_t>)
    DG_CHECK(dtype_ == DType::I32, "tensor {} accessed as i32", describe());
  else if constexpr (std::is_same_v<T, std::int64_t>)
    DG_CHECK(dtype_ == DType::I64, "tensor {} accessed as i64", describe());
  else
    static_assert(sizeof(T) == 0, "unsupported element type");
  return static_cast<T*>(data_);
}

}  // namespace dg
