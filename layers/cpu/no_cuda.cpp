// Device hooks for a CPU-only build: no device exists, any attempt to use one is an error.
#include <cstring>

#include "layers/device.h"
#include "layers/error.h"
#include "layers/ops.h"

namespace dg {

bool cuda_built() { return false; }
int cuda_device_count() { return 0; }
void cuda_set_device(int) { fail("this dgemma was built without CUDA (configure with -DDGEMMA_CUDA=ON)"); }
std::string cuda_device_description(int) { return "none (CPU-only build)"; }
DevicePeaks cuda_device_peaks(int) { return {}; }
void* cuda_malloc(std::size_t) { fail("this dgemma was built without CUDA: cannot allocate device memory"); }
void cuda_free(void*) noexcept {}
void copy_bytes(void* dst, Device dd, const void* src, Device sd, std::size_t n) {
  if (dd != Device::CPU || sd != Device::CPU) fail("this dgemma was built without CUDA: no device copies");
  if (n) std::memcpy(dst, src, n);
}
void cuda_memset_zero(void*, std::size_t) { fail("this dgemma was built without CUDA"); }
void cuda_synchronize() {}

namespace cuda {
void gemm(const Tensor&, const Tensor&, Tensor&, const GemmOpts&) { fail("this dgemma was built without CUDA"); }
void convert(const Tensor&, Tensor&) { fail("this dgemma was built without CUDA"); }
}  // namespace cuda

}  // namespace dg
