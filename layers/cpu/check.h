// Argument checks shared by the CPU op implementations.
#pragma once
#include <string>

#include "layers/tensor.h"

namespace dg::cpu {

// Fails naming the op and the argument unless t is defined, of `dtype` and of `shape`.
inline void expect(const char* op, const char* name, const Tensor& t, DType dtype, const Shape& shape) {
  if (!t.defined() || t.dtype() != dtype || t.shape() != shape)
    fail("{}: {} should be {}{}, got {}", op, name, dtype_name(dtype), shape_str(shape),
         t.defined() ? t.describe() : std::string("nothing"));
}

}  // namespace dg::cpu
