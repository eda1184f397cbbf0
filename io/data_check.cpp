// XXH64 and the NaN / Inf scan (io/data_check.h).
#include "io/data_check.h"

#include <fmt/format.h>

#include <algorithm>
#include <cstdint>
#include <cstring>

namespace dg {

namespace {

constexpr std::uint64_t P1 = 0x9E3779B185EBCA87ull, P2 = 0xC2B2AE3D27D4EB4Full, P3 = 0x165667B19E3779F9ull,
                        P4 = 0x85EBCA77C2B2AE63ull, P5 = 0x27D4EB2F165667C5ull;

inline std::uint64_t rotl(std::uint64_t x, int r) { return (x << r) | (x >> (64 - r)); }
inline std::uint64_t read64(const unsigned char* p) {
  std::uint64_t v;
  std::memcpy(&v, p, 8);  // little-endian hosts only (as the checkpoint format)
  return v;
}
inline std::uint32_t read32(const unsigned char* p) {
  std::uint32_t v;
  std::memcpy(&v, p, 4);
  return v;
}
inline std::uint64_t xround(std::uint64_t acc, std::uint64_t input) { return rotl(acc + input * P2, 31) * P1; }
inline std::uint64_t merge(std::uint64_t acc, std::uint64_t v) { return (acc ^ xround(0, v)) * P1 + P4; }

}  // namespace

Xxh64::Xxh64(std::uint64_t seed) : seed_(seed), v_{seed + P1 + P2, seed + P2, seed, seed - P1}, buf_{} {}

void Xxh64::update(const void* data, std::size_t n) {
  const auto* p = static_cast<const unsigned char*>(data);
  total_ += n;
  if (buffered_ + n < 32) {
    if (n) std::memcpy(buf_ + buffered_, p, n);
    buffered_ += n;
    return;
  }
  if (buffered_) {  // complete the pending stripe
    const std::size_t take = 32 - buffered_;
    std::memcpy(buf_ + buffered_, p, take);
    for (int i = 0; i < 4; ++i) v_[i] = xround(v_[i], read64(buf_ + 8 * i));
    p += take, n -= take, buffered_ = 0;
  }
  std::uint64_t v0 = v_[0], v1 = v_[1], v2 = v_[2], v3 = v_[3];
  for (; n >= 32; p += 32, n -= 32) {
    v0 = xround(v0, read64(p));
    v1 = xround(v1, read64(p + 8));
    v2 = xround(v2, read64(p + 16));
    v3 = xround(v3, read64(p + 24));
  }
  v_[0] = v0, v_[1] = v1, v_[2] = v2, v_[3] = v3;
  if (n) std::memcpy(buf_, p, n);
  buffered_ = n;
}

std::uint64_t Xxh64::digest() const {
  std::uint64_t h;
  if (total_ >= 32) {
    h = rotl(v_[0], 1) + rotl(v_[1], 7) + rotl(v_[2], 12) + rotl(v_[3], 18);
    for (int i = 0; i < 4; ++i) h = merge(h, v_[i]);
  } else {
    h = seed_ + P5;
  }
  h += total_;
  const unsigned char* p = buf_;
  std::size_t n = buffered_;
  for (; n >= 8; p += 8, n -= 8) h = rotl(h ^ xround(0, read64(p)), 27) * P1 + P4;
  if (n >= 4) {
    h = rotl(h ^ (static_cast<std::uint64_t>(read32(p)) * P1), 23) * P2 + P3;
    p += 4, n -= 4;
  }
  for (; n > 0; ++p, --n) h = rotl(h ^ (*p * P5), 11) * P1;
  h ^= h >> 33;
  h *= P2;
  h ^= h >> 29;
  h *= P3;
  h ^= h >> 32;
  return h;
}

std::uint64_t xxh64(const void* data, std::size_t n, std::uint64_t seed) {
  Xxh64 h(seed);
  h.update(data, n);
  return h.digest();
}

std::string checksum_string(std::uint64_t v) { return fmt::format("xxh64:{:016x}", v); }

bool parse_checksum(const std::string& text, std::uint64_t& out) {
  constexpr std::string_view prefix = "xxh64:";
  if (text.size() != prefix.size() + 16 || text.compare(0, prefix.size(), prefix) != 0) return false;
  std::uint64_t v = 0;
  for (std::size_t i = prefix.size(); i < text.size(); ++i) {
    const char c = text[i];
    const int d = c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10 : -1;
    if (d < 0) return false;
    v = v << 4 | static_cast<std::uint64_t>(d);
  }
  out = v;
  return true;
}

namespace {

// Elements whose exponent bits are all ones are NaN or Inf; the mantissa tells which. Blocks of kBlock
// elements are first tested with a branch-free OR over the block (the compiler vectorises it); only a
// block that holds one is scanned element by element.
template <class Bits>
struct Vec16;  // 16 bytes of Bits in one vector register
template <>
struct Vec16<std::uint16_t> {
  using type = std::uint16_t __attribute__((vector_size(16)));
};
template <>
struct Vec16<std::uint32_t> {
  using type = std::uint32_t __attribute__((vector_size(16)));
};

// Whether any of the n elements at p has all exponent bits set: 16 bytes at a time in vector registers.
template <class Bits>
bool any_exp_all_ones(const unsigned char* p, std::int64_t n, Bits exp_mask) {
  using V = typename Vec16<Bits>::type;
  constexpr std::int64_t kLanes = 16 / sizeof(Bits);
  V acc{}, v;
  std::int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes) {
    std::memcpy(&v, p + static_cast<std::size_t>(i) * sizeof(Bits), sizeof v);
    acc |= (v & exp_mask) == exp_mask;
  }
  bool any = false;
  for (std::int64_t l = 0; l < kLanes; ++l) any = any || acc[l] != 0;
  for (; i < n; ++i) {
    Bits b;
    std::memcpy(&b, p + static_cast<std::size_t>(i) * sizeof(Bits), sizeof b);
    any = any || (b & exp_mask) == exp_mask;
  }
  return any;
}

template <class Bits>
NonFinite scan(const void* data, std::int64_t n, Bits exp_mask, Bits mant_mask, Bits sign_bit) {
  constexpr std::int64_t kBlock = 1024;
  NonFinite r;
  const auto* p = static_cast<const unsigned char*>(data);
  auto at = [&](std::int64_t i) {
    Bits b;
    std::memcpy(&b, p + static_cast<std::size_t>(i) * sizeof(Bits), sizeof(Bits));
    return b;
  };
  for (std::int64_t i0 = 0; i0 < n; i0 += kBlock) {
    const std::int64_t i1 = std::min(n, i0 + kBlock);
    if (!any_exp_all_ones(p + static_cast<std::size_t>(i0) * sizeof(Bits), i1 - i0, exp_mask)) continue;
    for (std::int64_t i = i0; i < i1; ++i) {
      const Bits b = at(i);
      if ((b & exp_mask) != exp_mask) continue;
      if (r.count++ == 0) {
        r.first = i;
        r.first_value = (b & mant_mask) ? "nan" : (b & sign_bit) ? "-inf" : "inf";
      }
    }
  }
  return r;
}

}  // namespace

NonFinite find_non_finite(const void* data, DType dtype, std::int64_t n) {
  switch (dtype) {
    case DType::F32: return scan<std::uint32_t>(data, n, 0x7F800000u, 0x007FFFFFu, 0x80000000u);
    case DType::BF16: return scan<std::uint16_t>(data, n, 0x7F80u, 0x007Fu, 0x8000u);
    case DType::F16: return scan<std::uint16_t>(data, n, 0x7C00u, 0x03FFu, 0x8000u);
    default: return {};
  }
}

}  // namespace dg
