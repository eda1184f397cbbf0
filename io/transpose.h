// The one transpose of dgemma's HF <-> native layouts: Hugging Face stores the experts' gate_up / down
// projections as [.., b, a] where dgemma keeps [.., a, b] (io/hf_names.h), so conversion transposes the
// last two dimensions, in both directions, with the same code. Cache-tiled: each tile's source rows are
// copied (memcpy) into a buffer in L1, transposed there with typed moves (elements of 1, 2, 4, 8 or 16
// bytes), and its rows copied (memcpy) to the destination; never an element-sized memcpy call each.
#pragma once
#include <cstddef>
#include <cstdint>

#include "layers/tensor.h"

namespace dg {

// Rows [j0, j1) of the transpose of the row-major matrix src [a, b] of `es`-byte elements:
// dst[(j - j0) * a + i] = src[i * b + j]. dst holds (j1 - j0) * a elements.
void transpose_rows(const std::byte* src, std::int64_t a, std::int64_t b, std::size_t es, std::int64_t j0,
                    std::int64_t j1, std::byte* dst);

// The elements [first, first + n) of the batched transpose [.., b, a] of src [.., a, b] (src_shape, at least
// 2-d), written to dst[0, n). first and n are whole rows of the result: multiples of a.
void transpose_range(const std::byte* src, const Shape& src_shape, std::size_t es, std::int64_t first, std::int64_t n,
                     std::byte* dst);

// The whole batched transpose: dst [.., b, a] = src [.., a, b].
void transpose_last2(const std::byte* src, const Shape& src_shape, std::size_t es, std::byte* dst);

}  // namespace dg
