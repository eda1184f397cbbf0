// Checks over raw tensor bytes: the XXH64 checksum that checkpoint manifests record per shard
// (io/checkpoint.h), and the scan for NaN / Inf in float weights (io/hf_model.h, `dgemma inspect`,
// `dgemma convert`). Both work on the bytes as stored (little-endian), without converting them.
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>

#include "layers/dtype.h"

namespace dg {

// XXH64 (the xxHash 64-bit algorithm, seed 0 by default), fed in pieces of any size: the digest equals
// xxh64() of the concatenated pieces. About 10 GB/s on one core.
class Xxh64 {
 public:
  explicit Xxh64(std::uint64_t seed = 0);
  void update(const void* data, std::size_t n);
  std::uint64_t digest() const;

 private:
  std::uint64_t seed_, v_[4], total_ = 0;
  unsigned char buf_[32];
  std::size_t buffered_ = 0;
};

std::uint64_t xxh64(const void* data, std::size_t n, std::uint64_t seed = 0);

// The manifest's text form "xxh64:<16 lowercase hex digits>" and its parser (false on anything else).
std::string checksum_string(std::uint64_t xxh64_value);
bool parse_checksum(const std::string& text, std::uint64_t& out);

// Non-finite values (NaN, +Inf, -Inf) among `n` elements of `dtype` at `data`: the index of the first one
// (-1 when there is none) and how many there are. Integer dtypes have none.
struct NonFinite {
  std::int64_t first = -1;
  std::int64_t count = 0;
  std::string first_value;  // "nan", "inf" or "-inf"
  explicit operator bool() const { return count > 0; }
};
NonFinite find_non_finite(const void* data, DType dtype, std::int64_t n);

}  // namespace dg
