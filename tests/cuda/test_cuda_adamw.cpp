// CUDA AdamW update (layers/cuda/adamw.h) against a CPU loop of torch.optim.AdamW's single-tensor step
// written here (the formulas of optim/adamw.h, as FlatParams::adamw_update computes them). Runs only
// with a GPU (else exit 77). Tolerance: none. The scalars are the same double expressions rounded to
// fp32, and the kernel rounds every fp32 operation separately (no fused multiply-add; IEEE division and
// square root), which is what the host loop does, so master and both moments must be equal bit for bit
// after several steps, for both lerp branches, with and without weight decay, f32 and bf16 gradients.
#include <doctest/doctest.h>

#include <cmath>
#include <cstring>

#include "layers/cuda/adamw.h"
#include "tests/op_test_util.h"

using namespace dg;
using dg::test::random_tensor;
using dg::cuda::adamw_update;

namespace {

struct Hyper {
  double lr, beta1, beta2, eps, weight_decay, clip;
};

// One step of torch.optim.AdamW (single tensor) with the gradient multiplied by clip first.
void reference_step(std::vector<float>& p, std::vector<float>& m, std::vector<float>& v, const std::vector<float>& g,
                    const Hyper& h, std::int64_t step) {
  const auto t = static_cast<double>(step);
  const auto decay = static_cast<float>(1.0 - h.lr * h.weight_decay);
  const double w1d = 1.0 - h.beta1;
  const auto w1 = static_cast<float>(w1d), one_minus_w1 = static_cast<float>(1.0 - w1d);
  const bool lerp_low = std::abs(w1d) < 0.5;
  const auto b2 = static_cast<float>(h.beta2), w2 = static_cast<float>(1.0 - h.beta2);
  const auto step_size = static_cast<float>(h.lr / (1.0 - std::pow(h.beta1, t)));
  const auto bc2_sqrt = static_cast<float>(std::sqrt(1.0 - std::pow(h.beta2, t)));
  const auto eps = static_cast<float>(h.eps), clip = static_cast<float>(h.clip);
  for (std::size_t j = 0; j < p.size(); ++j) {
    const float gj = g[j] * clip;
    if (h.weight_decay != 0) p[j] *= decay;
    m[j] = lerp_low ? m[j] + w1 * (gj - m[j]) : gj - (gj - m[j]) * one_minus_w1;
    v[j] = v[j] * b2 + w2 * gj * gj;
    const float denom = std::sqrt(v[j]) / bc2_sqrt + eps;
    p[j] = p[j] - step_size * (m[j] / denom);
  }
}

std::vector<float> values(const Tensor& t) {
  const Tensor h = t.to(Device::CPU);
  return std::vector<float>(h.data<float>(), h.data<float>() + h.numel());
}

std::int64_t bit_mismatches(const std::vector<float>& a, const std::vector<float>& b) {
  std::int64_t n = 0;
  for (std::size_t i = 0; i < a.size(); ++i) n += std::memcmp(&a[i], &b[i], sizeof(float)) != 0;
  return n;
}

}  // namespace

TEST_CASE("cuda adamw_update equals the torch AdamW loop bit for bit") {
  const Hyper kHypers[] = {
      {1e-3, 0.95, 0.99, 1e-8, 1e-4, 1.0},   // the reference recipe (lerp weight 0.05 < 0.5)
      {3e-2, 0.3, 0.999, 1e-6, 0.1, 0.37},   // lerp weight 0.7 >= 0.5: the other lerp branch; clipped
      {1e-4, 0.9, 0.95, 1e-8, 0.0, 0.5},     // no weight decay
  };
  std::uint32_t seed = 1;
  for (const std::int64_t n : {std::int64_t{1}, std::int64_t{0}, std::int64_t{1000}, std::int64_t{4097}})
    for (const Hyper& h : kHypers)
      for (const DType gt : {DType::F32, DType::BF16}) {
        CAPTURE(n);
        CAPTURE(h.beta1);
        CAPTURE(h.weight_decay);
        CAPTURE(dtype_name(gt));
        Tensor p0 = random_tensor({n}, seed++, 2.0f), m0 = random_tensor({n}, seed++, 0.1f);
        Tensor v0 = random_tensor({n}, seed++, 0.01f);
        for (std::int64_t i = 0; i < n; ++i) v0.data<float>()[i] = std::fabs(v0.data<float>()[i]);
        std::vector<float> p = values(p0), m = values(m0), v = values(v0);
        Tensor gp = p0.to(Device::CUDA), gm = m0.to(Device::CUDA), gv = v0.to(Device::CUDA);
        for (std::int64_t step = 1; step <= 4; ++step) {
          Tensor g = random_tensor({n}, seed++, 3.0f);
          if (gt == DType::BF16) g = g.to(DType::BF16).to(DType::F32);  // the values the device reads
          reference_step(p, m, v, values(g), h, step);
          adamw_update(gp, gm, gv, g.to(gt).to(Device::CUDA), h.lr, h.beta1, h.beta2, h.eps, h.weight_decay, step,
                       h.clip);
        }
        CHECK(bit_mismatches(values(gp), p) == 0);
        CHECK(bit_mismatches(values(gm), m) == 0);
        CHECK(bit_mismatches(values(gv), v) == 0);
      }
}

TEST_CASE("cuda adamw_update rejects bad buffers and steps") {
  Tensor p = Tensor::zeros({8}, DType::F32, Device::CUDA), m = p.clone(), v = p.clone();
  const Tensor g = Tensor::zeros({8}, DType::F32, Device::CUDA), g7 = Tensor::zeros({7}, DType::F32, Device::CUDA);
  CHECK_THROWS_WITH_AS(adamw_update(p, m, v, g7, 1e-3, 0.9, 0.99, 1e-8, 0.0, 1, 1.0), doctest::Contains("7 elements"),
                       Error);
  CHECK_THROWS_WITH_AS(adamw_update(p, m, v, g, 1e-3, 0.9, 0.99, 1e-8, 0.0, 0, 1.0), doctest::Contains("step 0"),
                       Error);
  Tensor m16 = Tensor::zeros({8}, DType::BF16, Device::CUDA);
  CHECK_THROWS_WITH_AS(adamw_update(p, m16, v, g, 1e-3, 0.9, 0.99, 1e-8, 0.0, 1, 1.0), doctest::Contains("must be f32"),
                       Error);
  Tensor host = Tensor::zeros({8}, DType::F32);
  CHECK_THROWS_WITH_AS(adamw_update(host, m, v, g, 1e-3, 0.9, 0.99, 1e-8, 0.0, 1, 1.0),
                       doctest::Contains("device tensor"), Error);
}
