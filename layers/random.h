// Counter-based randomness (DESIGN.md "Layout independence"): every random number is a pure function of
// (seed, purpose, step, global sample index, position), never of the rank, the batch composition or
// the order of calls, so a run on N ranks draws exactly what a run on 1 rank draws, and resuming at a
// step redraws the same numbers. The mixer is SplitMix64's finaliser applied to the key words in turn
// (a strong 64-bit hash; we need independence between keys, not cryptographic strength).
#pragma once
#include <cstdint>

namespace dg::rng {

// What a number is for; part of the key so that different uses never share a stream.
enum class Purpose : std::uint64_t {
  CanvasInit = 1,  // generation: the initial uniform canvas
  Sample = 2,      // generation: the categorical sample of a denoising step
  Renoise = 3,     // generation: fresh uniform tokens for positions not accepted
  NoiseLevel = 4,  // SFT: the per-example noise level t
  NoiseMask = 5,   // SFT: which supervised positions are replaced
  NoiseToken = 6,  // SFT: the replacement tokens
  SelfCondCoin = 7,
  BlockChoice = 8,
  DataShuffle = 9,
  Init = 10,       // random model initialisation (dgemma init)
};

constexpr std::uint64_t mix(std::uint64_t x) {
  x += 0x9e3779b97f4a7c15ull;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}

constexpr std::uint64_t key(std::uint64_t seed, Purpose p, std::uint64_t step, std::uint64_t sample,
                            std::uint64_t position) {
  std::uint64_t h = mix(seed);
  h = mix(h ^ static_cast<std::uint64_t>(p));
  h = mix(h ^ step);
  h = mix(h ^ sample);
  return mix(h ^ position);
}

// The sample index of a request that brings its own seed (the OpenAI `seed` of a generation request): its
// random numbers are keyed by the seed instead of its position, so the same request with the same seed
// draws the same numbers on any line. Positions are below 2^63; these are not.
constexpr std::uint64_t seeded_sample(std::uint64_t seed) { return mix(seed) | (std::uint64_t{1} << 63); }

// Uniform in [0, 1) with 24 random bits (exactly representable in fp32).
constexpr float uniform(std::uint64_t k) { return static_cast<float>(k >> 40) * (1.0f / 16777216.0f); }
// Uniform in [0, 1) with 53 bits.
constexpr double uniform_double(std::uint64_t k) { return static_cast<double>(k >> 11) * (1.0 / 9007199254740992.0); }
// Uniform integer in [0, n) (Lemire's multiply-shift; bias below 2^-32 for n < 2^32).
constexpr std::uint32_t below(std::uint64_t k, std::uint32_t n) {
  return static_cast<std::uint32_t>(((k >> 32) * static_cast<std::uint64_t>(n)) >> 32);
}

}  // namespace dg::rng
