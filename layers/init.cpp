#include "layers/init.h"

#include <cmath>
#include <limits>

#include "layers/random.h"

namespace dg {

namespace {

// N(0, std) by Box-Muller on two counter-keyed uniforms per element.
void normal(std::uint64_t seed, std::uint64_t tensor_index, float std, std::int64_t begin, std::int64_t count,
            float* dst) {
  for (std::int64_t i = 0; i < count; ++i) {
    const std::uint64_t e = static_cast<std::uint64_t>(begin + i);
    const double u1 = 1.0 - rng::uniform_double(rng::key(seed, rng::Purpose::Init, tensor_index, e, 0));
    const double u2 = rng::uniform_double(rng::key(seed, rng::Purpose::Init, tensor_index, e, 1));
    dst[i] = static_cast<float>(std * std::sqrt(-2.0 * std::log(u1)) * std::cos(6.283185307179586 * u2));
  }
}

void constant(float v, std::int64_t count, float* dst) {
  for (std::int64_t i = 0; i < count; ++i) dst[i] = v;
}

}  // namespace

bool init_is_ones(const std::string& n) {
  auto ends = [&](const char* s) {
    const std::string suffix(s);
    return n.size() >= suffix.size() && n.compare(n.size() - suffix.size(), suffix.size(), suffix) == 0;
  };
  return ends("norm.weight") || ends("layernorm.weight") || ends("layernorm_1.weight") || ends("layernorm_2.weight") ||
         ends("moe.gate.scale") || ends("per_expert_scale") || ends("layer_scalar");
}

void init_parameter(const std::string& name, std::uint64_t seed, std::uint64_t tensor_index, float std,
                    std::int64_t begin, std::int64_t count, float* dst) {
  if (init_is_ones(name)) return constant(1.0f, count, dst);
  normal(seed, tensor_index, std, begin, count, dst);
}

void init_carried(const CarriedSpec& spec, std::uint64_t seed, std::uint64_t tensor_index, std::int64_t begin,
                  std::int64_t count, float* dst) {
  constexpr float inf = std::numeric_limits<float>::infinity();
  switch (spec.init) {
    case CarriedInit::Normal: return normal(seed, tensor_index, spec.std, begin, count, dst);
    case CarriedInit::Ones: return constant(1.0f, count, dst);
    case CarriedInit::Zeros: return constant(0.0f, count, dst);
    case CarriedInit::PlusInf: return constant(inf, count, dst);
    case CarriedInit::MinusInf: return constant(-inf, count, dst);
  }
}

}  // namespace dg
