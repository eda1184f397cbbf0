// Random initialisation of model parameters, as the reference's _init_weights does: RMSNorm weights,
// router scales, per-expert scales and layer scalars are 1; every other tensor is N(0, std) with
// std = initializer_range (0.02). Values are keyed by (seed, tensor index, element index) through the
// counter-based generator, so any slice of any tensor can be produced alone, on any rank, in any order.
// The carried tensors (the vision tower, layers/vision.h) are initialised as their CarriedSpec says.
#pragma once
#include <cstdint>
#include <string>

#include "layers/vision.h"

namespace dg {

bool init_is_ones(const std::string& native_name);
// Elements [begin, begin + count) of the flattened tensor, written to dst[0 .. count).
void init_parameter(const std::string& native_name, std::uint64_t seed, std::uint64_t tensor_index, float std,
                    std::int64_t begin, std::int64_t count, float* dst);
// The same for a carried tensor. Tensor indices continue after the model's: the text parameters take
// 0 .. model_params(c).size() - 1, the carried tensors the following ones in vision_params() order.
void init_carried(const CarriedSpec& spec, std::uint64_t seed, std::uint64_t tensor_index, std::int64_t begin,
                  std::int64_t count, float* dst);

}  // namespace dg
