// Per-process CUDA context for the ops: the stream ops run on and the cuBLASLt handle + workspace.
#pragma once
#include <cublasLt.h>
#include <cuda_runtime.h>

#include <cstddef>

#include "layers/cuda/check.h"

namespace dg::cuda {

cudaStream_t stream();              // the stream every op is enqueued on
void set_stream(cudaStream_t s);
cublasLtHandle_t lt_handle();       // created on first use, on the current device
void* lt_workspace(std::size_t* bytes);

// Device scratch in stream order (cudaMallocAsync's pool): freed after the work enqueued before it.
class Scratch {
 public:
  explicit Scratch(std::size_t bytes) {
    if (bytes) DG_CUDA(cudaMallocAsync(&p_, bytes, stream()));
  }
  ~Scratch() {
    if (p_) cudaFreeAsync(p_, stream());
  }
  Scratch(const Scratch&) = delete;
  Scratch& operator=(const Scratch&) = delete;
  template <class T>
  T* as() const {
    return static_cast<T*>(p_);
  }

 private:
  void* p_ = nullptr;
};

template <class T>
void to_device(T* dst, const T* src, std::size_t count) {
  if (count) DG_CUDA(cudaMemcpyAsync(dst, src, count * sizeof(T), cudaMemcpyHostToDevice, stream()));
}

// Copies count elements to the host and waits for them (and for everything enqueued before).
template <class T>
void to_host(T* dst, const T* src, std::size_t count) {
  if (count) DG_CUDA(cudaMemcpyAsync(dst, src, count * sizeof(T), cudaMemcpyDeviceToHost, stream()));
  DG_CUDA(cudaStreamSynchronize(stream()));
}

}  // namespace dg::cuda
