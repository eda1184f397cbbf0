#include "io/transpose.h"

#include <algorithm>
#include <cstring>

namespace dg {

namespace {

// One element type, one tile at a time: the tile's source rows are copied (memcpy) into a small buffer,
// transposed there (it sits in L1, with no power-of-two strides to alias), and its rows copied out
// (memcpy) to the destination. Tiles of 64 x 64 elements (32 x 32 for elements over 2 bytes).
template <class T>
void tiled(const T* src, std::int64_t a, std::int64_t b, std::int64_t j0, std::int64_t j1, T* dst) {
  constexpr std::int64_t kTile = sizeof(T) <= 2 ? 64 : 32;
  alignas(64) T in[kTile * kTile], out[kTile * kTile];
  for (std::int64_t jt = j0; jt < j1; jt += kTile) {
    const std::int64_t nj = std::min(kTile, j1 - jt);
    for (std::int64_t it = 0; it < a; it += kTile) {
      const std::int64_t ni = std::min(kTile, a - it);
      for (std::int64_t i = 0; i < ni; ++i)
        std::memcpy(in + i * kTile, src + (it + i) * b + jt, static_cast<std::size_t>(nj) * sizeof(T));
      for (std::int64_t j = 0; j < nj; ++j)
        for (std::int64_t i = 0; i < ni; ++i) out[j * kTile + i] = in[i * kTile + j];
      for (std::int64_t j = 0; j < nj; ++j)
        std::memcpy(dst + (jt - j0 + j) * a + it, out + j * kTile, static_cast<std::size_t>(ni) * sizeof(T));
    }
  }
}

template <std::size_t N>
struct Bytes {
  unsigned char v[N];
};

}  // namespace

void transpose_rows(const std::byte* src, std::int64_t a, std::int64_t b, std::size_t es, std::int64_t j0,
                    std::int64_t j1, std::byte* dst) {
  DG_CHECK(a >= 0 && b >= 0 && 0 <= j0 && j0 <= j1 && j1 <= b, "transpose_rows: rows [{}, {}) of a [{}, {}] matrix", j0,
           j1, b, a);
  if (a == 0 || j0 == j1) return;
  switch (es) {
    case 1: return tiled(reinterpret_cast<const std::uint8_t*>(src), a, b, j0, j1, reinterpret_cast<std::uint8_t*>(dst));
    case 2: return tiled(reinterpret_cast<const std::uint16_t*>(src), a, b, j0, j1, reinterpret_cast<std::uint16_t*>(dst));
    case 4: return tiled(reinterpret_cast<const std::uint32_t*>(src), a, b, j0, j1, reinterpret_cast<std::uint32_t*>(dst));
    case 8: return tiled(reinterpret_cast<const std::uint64_t*>(src), a, b, j0, j1, reinterpret_cast<std::uint64_t*>(dst));
    case 16: return tiled(reinterpret_cast<const Bytes<16>*>(src), a, b, j0, j1, reinterpret_cast<Bytes<16>*>(dst));
    default: fail("transpose: elements of {} bytes are not supported", es);
  }
}

void transpose_range(const std::byte* src, const Shape& src_shape, std::size_t es, std::int64_t first, std::int64_t n,
                     std::byte* dst) {
  DG_CHECK(src_shape.size() >= 2, "transpose of a {}-d tensor", src_shape.size());
  const std::int64_t a = src_shape[src_shape.size() - 2], b = src_shape.back(), mat = a * b;
  if (n == 0 || mat == 0) return;
  DG_CHECK(first % a == 0 && n % a == 0 && first + n <= shape_numel(src_shape),
           "transpose_range [{}, +{}) of {}: not whole rows of {}", first, n, shape_str(src_shape), a);
  for (std::int64_t at = first; at < first + n;) {  // one matrix (batch element) at a time
    const std::int64_t z = at / mat, row = (at - z * mat) / a;
    const std::int64_t rows = std::min(b - row, (first + n - at) / a);
    transpose_rows(src + static_cast<std::size_t>(z * mat) * es, a, b, es, row, row + rows,
                   dst + static_cast<std::size_t>(at - first) * es);
    at += rows * a;
  }
}

void transpose_last2(const std::byte* src, const Shape& src_shape, std::size_t es, std::byte* dst) {
  transpose_range(src, src_shape, es, 0, shape_numel(src_shape), dst);
}

}  // namespace dg
