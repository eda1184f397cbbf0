// Device hooks on the CUDA runtime.
#include <cuda_runtime.h>

#include <cstring>

#include "layers/cuda/check.h"
#include "layers/device.h"
#include "layers/error.h"

namespace dg {

bool cuda_built() { return true; }

int cuda_device_count() {
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess) {  // e.g. error 35: no driver on a CI machine
    cudaGetLastError();
    return 0;
  }
  return n;
}

void cuda_set_device(int ordinal) { DG_CUDA(cudaSetDevice(ordinal)); }

std::string cuda_device_description(int ordinal) {
  cudaDeviceProp p{};
  DG_CUDA(cudaGetDeviceProperties(&p, ordinal));
  return fmt::format("{} (sm_{}{}, {:.1f} GiB)", p.name, p.major, p.minor,
                     static_cast<double>(p.totalGlobalMem) / (1024.0 * 1024.0 * 1024.0));
}

void* cuda_malloc(std::size_t bytes) {
  void* p = nullptr;
  if (bytes == 0) return nullptr;
  const cudaError_t e = cudaMalloc(&p, bytes);
  if (e != cudaSuccess) fail("cudaMalloc of {} bytes failed: {}", bytes, cudaGetErrorString(e));
  return p;
}

void cuda_free(void* p) noexcept {
  if (p) cudaFree(p);
}

void copy_bytes(void* dst, Device dd, const void* src, Device sd, std::size_t n) {
  if (n == 0) return;
  if (dd == Device::CPU && sd == Device::CPU) {
    std::memcpy(dst, src, n);
    return;
  }
  const cudaMemcpyKind kind = dd == Device::CPU ? cudaMemcpyDeviceToHost
                              : sd == Device::CPU ? cudaMemcpyHostToDevice
                                                  : cudaMemcpyDeviceToDevice;
  DG_CUDA(cudaMemcpy(dst, src, n, kind));
}

void cuda_memset_zero(void* p, std::size_t n) {
  if (n) DG_CUDA(cudaMemset(p, 0, n));
}

void cuda_synchronize() { DG_CUDA(cudaDeviceSynchronize()); }

DevicePeaks cuda_device_peaks(int ordinal) {
  int mem_khz = 0, bus_bits = 0, sm_khz = 0, sms = 0, major = 0;
  DG_CUDA(cudaDeviceGetAttribute(&mem_khz, cudaDevAttrMemoryClockRate, ordinal));
  DG_CUDA(cudaDeviceGetAttribute(&bus_bits, cudaDevAttrGlobalMemoryBusWidth, ordinal));
  DG_CUDA(cudaDeviceGetAttribute(&sm_khz, cudaDevAttrClockRate, ordinal));
  DG_CUDA(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, ordinal));
  DG_CUDA(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, ordinal));
  DevicePeaks p;
  p.mem_gb_per_s = 2.0 * mem_khz * 1e3 * (bus_bits / 8.0) / 1e9;  // double data rate
  const double per_sm = major == 9 ? 4096 : major == 8 ? 2048 : 0;
  p.bf16_tflops = sms * (sm_khz * 1e3) * per_sm / 1e12;
  return p;
}

}  // namespace dg
