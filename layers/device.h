// The few things the host code needs to know about accelerators. With a CPU-only build every
// function here reports "no device" or throws dg::Error, so callers need no #ifdefs.
#pragma once
#include <cstddef>
#include <string>

namespace dg {

enum class Device : unsigned char { CPU, CUDA };

constexpr const char* device_name(Device d) { return d == Device::CPU ? "cpu" : "cuda"; }

bool cuda_built();                  // compiled with the CUDA backend
int cuda_device_count();            // 0 when not built, no driver or no device (never throws)
void cuda_set_device(int ordinal);
std::string cuda_device_description(int ordinal);  // "NVIDIA H100 80GB HBM3 (sm_90, 79.1 GiB)"

// Theoretical peaks of a device, for "% of peak" in benchmarks: DRAM bandwidth from the memory clock
// and bus width, dense bf16 tensor-core rate from SM count x clock x flops/clock/SM (4096 on sm_90,
// 2048 on sm_80/86/89; 0 when unknown). All zero without a device.
struct DevicePeaks {
  double mem_gb_per_s = 0;
  double bf16_tflops = 0;
};
DevicePeaks cuda_device_peaks(int ordinal);

void* cuda_malloc(std::size_t bytes);
void cuda_free(void* p) noexcept;
// Copies bytes between any two of host and device memory; synchronous.
void copy_bytes(void* dst, Device dst_dev, const void* src, Device src_dev, std::size_t bytes);
void cuda_memset_zero(void* p, std::size_t bytes);
void cuda_synchronize();

}  // namespace dg
