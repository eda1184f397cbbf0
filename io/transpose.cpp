#include "io/transpose.h"

#include <algorithm>
#include <cstdint>
#include <cstring>

namespace dg {

namespace {

// out[j * ld + i] = in[i * ld + j] for i < ni, j < nj: element by element.
template <class T>
void transpose_tile(const T* in, T* out, std::int64_t ld, std::int64_t ni, std::int64_t nj) {
  for (std::int64_t j = 0; j < nj; ++j)
    for (std::int64_t i = 0; i < ni; ++i) out[j * ld + i] = in[i * ld + j];
}

// 2-byte elements (bf16, f16: the expert weights): whole 8 x 8 blocks in registers, three rounds of
// interleaves (16-, 32-, then 64-bit lanes) turn 8 rows into 8 columns; the edges element by element.
using u16x8 = std::uint16_t __attribute__((vector_size(16)));

inline void transpose_8x8(const std::uint16_t* in, std::uint16_t* out, std::int64_t ld) {
  u16x8 r[8], t[8], u[8];
  for (int k = 0; k < 8; ++k) std::memcpy(&r[k], in + k * ld, sizeof(u16x8));
  for (int k = 0; k < 8; k += 2) {
    t[k] = __builtin_shufflevector(r[k], r[k + 1], 0, 8, 1, 9, 2, 10, 3, 11);
    t[k + 1] = __builtin_shufflevector(r[k], r[k + 1], 4, 12, 5, 13, 6, 14, 7, 15);
  }
  for (int k = 0; k < 8; k += 4)
    for (int h = 0; h < 2; ++h) {
      u[k + 2 * h] = __builtin_shufflevector(t[k + h], t[k + h + 2], 0, 1, 8, 9, 2, 3, 10, 11);
      u[k + 2 * h + 1] = __builtin_shufflevector(t[k + h], t[k + h + 2], 4, 5, 12, 13, 6, 7, 14, 15);
    }
  for (int k = 0; k < 4; ++k) {
    const u16x8 lo = __builtin_shufflevector(u[k], u[k + 4], 0, 1, 2, 3, 8, 9, 10, 11);
    const u16x8 hi = __builtin_shufflevector(u[k], u[k + 4], 4, 5, 6, 7, 12, 13, 14, 15);
    std::memcpy(out + (2 * k) * ld, &lo, sizeof(u16x8));
    std::memcpy(out + (2 * k + 1) * ld, &hi, sizeof(u16x8));
  }
}

template <>
void transpose_tile(const std::uint16_t* in, std::uint16_t* out, std::int64_t ld, std::int64_t ni, std::int64_t nj) {
  const std::int64_t bi = ni / 8 * 8, bj = nj / 8 * 8;
  for (std::int64_t i = 0; i < bi; i += 8)
    for (std::int64_t j = 0; j < bj; j += 8) transpose_8x8(in + i * ld + j, out + j * ld + i, ld);
  for (std::int64_t j = 0; j < nj; ++j)  // the edges: columns past the last whole block, rows past it
    for (std::int64_t i = j < bj ? bi : 0; i < ni; ++i) out[j * ld + i] = in[i * ld + j];
}

// n elements; a whole tile row (the common case) as a copy of constant size, which the compiler makes a
// few vector moves rather than a `rep movs` with its start-up cost on every 128-byte row.
template <class T, std::int64_t kTile>
inline void copy_row(T* to, const T* from, std::int64_t n) {
  if (n == kTile)
    std::memcpy(to, from, kTile * sizeof(T));
  else
    std::memcpy(to, from, static_cast<std::size_t>(n) * sizeof(T));
}

// One element type, one tile at a time: the tile's source rows are copied (memcpy) into a small buffer,
// transposed there (it sits in L1, with no power-of-two strides to alias; 2-byte elements in 8 x 8 register
// blocks), and its rows copied out
// (memcpy) to the destination. Tiles of 64 x 64 elements (32 x 32 for elements over 2 bytes).
template <class T>
void tiled(const T* src, std::int64_t a, std::int64_t b, std::int64_t j0, std::int64_t j1, T* dst) {
  constexpr std::int64_t kTile = sizeof(T) <= 2 ? 64 : 32;
  alignas(64) T in[kTile * kTile], out[kTile * kTile];
  for (std::int64_t jt = j0; jt < j1; jt += kTile) {
    const std::int64_t nj = std::min(kTile, j1 - jt);
    for (std::int64_t it = 0; it < a; it += kTile) {
      const std::int64_t ni = std::min(kTile, a - it);
      for (std::int64_t i = 0; i < ni; ++i) copy_row<T, kTile>(in + i * kTile, src + (it + i) * b + jt, nj);
      transpose_tile(in, out, kTile, ni, nj);
      for (std::int64_t j = 0; j < nj; ++j) copy_row<T, kTile>(dst + (jt - j0 + j) * a + it, out + j * kTile, ni);
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
