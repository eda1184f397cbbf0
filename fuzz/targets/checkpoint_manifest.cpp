// Fuzz target: the HDF5 checkpoint manifest (io/checkpoint.h). The input is a manifest.json:
// parse_json_strict + CheckpointManifest::from_json, which validates everything but the rank files (shapes,
// dtypes, slices in range, exact tiling, files and datasets). A manifest that validates must round-trip:
// from_json(dump()) validates again and dumps the same text.
#include <string>
#include <string_view>

#include "fuzz/targets/fuzz_util.h"
#include "io/checkpoint.h"
#include "io/strict_json.h"

using namespace dg;

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::string_view text(reinterpret_cast<const char*>(data), size);
  fuzz::run_guarded([&] {
    const CheckpointManifest m =
        CheckpointManifest::from_json(parse_json_strict(text, "fuzz/manifest.json"), "fuzz/manifest.json");
    for (const auto& [key, t] : m.tensors)
      for (const CheckpointShard& s : t.shards) {
        (void)s.slice.str();
        (void)s.slice.local_shape();
        if (s.slice.numel() < 0) fuzz::invariant_failed("negative shard size");
      }
    const std::string dumped = m.dump();
    try {
      const CheckpointManifest again =
          CheckpointManifest::from_json(parse_json_strict(dumped, "fuzz/dumped.json"), "fuzz/dumped.json");
      if (again.dump() != dumped) fuzz::invariant_failed("manifest dump() does not round-trip");
    } catch (const std::exception& e) {
      std::fprintf(stderr, "fuzz: reloading the dump failed: %s\n", e.what());
      fuzz::invariant_failed("a manifest that validated does not reload from its own dump()");
    }
  });
  return 0;
}
