// Fuzz target: the safetensors reader (io/safetensors.h). The input is a whole .safetensors file: first the
// in-memory validator parse_safetensors, then, when it accepts the bytes, the mmap reader
// SafetensorsFile::open on the same bytes written to a scratch file, reading every tensor's bytes (and
// every tensor dgemma computes with as a dg::Tensor) so that ASan sees any read outside the mapping.
// Invariants checked on accepted files (documented in safetensors.h): 8 + N + data_size == file size,
// entries sorted, contiguous from 0, each end - begin == its byte size; open() accepts what
// parse_safetensors accepted and reports the same header.
#include <cstdint>
#include <cstring>
#include <span>

#include "fuzz/targets/fuzz_util.h"
#include "io/safetensors.h"

using namespace dg;

namespace {
volatile unsigned sink;

void touch(std::span<const std::byte> b) {
  unsigned s = 0;
  for (std::byte x : b) s += static_cast<unsigned>(x);
  sink = s;
}

void check_header(const SafetensorsHeader& h, std::size_t size) {
  if (8 + h.header_size + h.data_size != size) fuzz::invariant_failed("8 + header_size + data_size != file size");
  std::uint64_t at = 0;
  for (const SafetensorsEntry& e : h.entries) {
    if (e.begin != at) fuzz::invariant_failed("entries not contiguous from offset 0 in data order");
    if (e.end < e.begin || e.end > h.data_size) fuzz::invariant_failed("entry outside the data buffer");
    // numel · bits / 8 == nbytes without overflow: nbytes · 8 / bits == numel and the division is exact
    const auto n = static_cast<std::uint64_t>(e.numel()), nb = static_cast<std::uint64_t>(e.nbytes());
    const auto b = static_cast<std::uint64_t>(e.bits);
    const bool ok = b != 0 && (n == 0 ? nb == 0 : (nb <= UINT64_MAX / 8 && (nb * 8) % b == 0 && (nb * 8) / b == n));
    if (!ok) fuzz::invariant_failed("entry byte size != numel * bits / 8");
    for (auto d : e.shape)
      if (d < 0) fuzz::invariant_failed("negative dimension accepted");
    at = e.end;
  }
  if (at != h.data_size) fuzz::invariant_failed("data buffer not covered exactly");
}
}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::span<const std::byte> file(reinterpret_cast<const std::byte*>(data), size);
  SafetensorsHeader header;
  bool ok = false;
  fuzz::run_guarded([&] {
    header = parse_safetensors(file, "fuzz.safetensors");
    ok = true;
  });
  if (!ok) return 0;
  check_header(header, size);

  const std::string path = fuzz::write_scratch(".safetensors", data, size);
  try {
    const SafetensorsFile f = SafetensorsFile::open(path);
    if (f.entries().size() != header.entries.size() || f.header_size() != header.header_size ||
        f.data_size() != header.data_size || f.file_size() != size)
      fuzz::invariant_failed("SafetensorsFile::open and parse_safetensors disagree");
    for (const SafetensorsEntry& e : f.entries()) {
      if (f.find(e.name) != &f.entry(e.name)) fuzz::invariant_failed("find() and entry() disagree");
      const auto b = f.bytes(e.name);
      if (b.size() != e.nbytes()) fuzz::invariant_failed("bytes() size != entry size");
      touch(b);
      if (e.type) {
        const Tensor t = f.tensor(e.name);
        if (t.nbytes() != e.nbytes()) fuzz::invariant_failed("tensor() size != entry size");
        touch({static_cast<const std::byte*>(t.raw()), t.nbytes()});
      }
    }
  } catch (const std::exception& e) {
    std::fprintf(stderr, "fuzz: open() refused what parse_safetensors accepted: %s\n", e.what());
    fuzz::invariant_failed("SafetensorsFile::open rejects a file parse_safetensors accepts");
  }
  return 0;
}
