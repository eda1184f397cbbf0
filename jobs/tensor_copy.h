// Moving whole tensors between files on many ranks, shared by `dgemma convert` and `dgemma sft` (which
// copies the input model's carried tensors into its checkpoints): who copies which tensor, and one HF
// tensor streamed into a checkpoint.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "io/checkpoint.h"
#include "io/data_check.h"
#include "io/safetensors.h"

namespace dg {

inline constexpr std::int64_t kPieceBytes = std::int64_t{16} << 20;  // the streaming unit, both directions

// find_non_finite over consecutive ranges of one tensor: the first one's index in the whole tensor.
struct NonFiniteScan {
  NonFinite found;
  void add(const void* data, DType t, std::int64_t first, std::int64_t n);
};

// The shape with its last two dims swapped (the experts' HF layout <-> the native one).
Shape swap_last2(Shape s);

// Tensors spread over the ranks, largest first to the least loaded: the same answer on every rank.
std::vector<int> spread_over_ranks(const std::vector<std::uint64_t>& bytes, int ranks);

// The dtype an HF tensor has in a checkpoint (its stored one); ConfigError naming the file and the tensor when
// checkpoints cannot hold it.
DType checkpoint_dtype(const ShardedSafetensors& files, const std::string& hf);

// One tensor of an HF file into the checkpoint as `key`, in its stored dtype, streamed: kPieceBytes at a
// time in the checkpoint's order, transposed from the mmap'ed source when the layouts differ (`transposed`:
// the checkpoint holds the last two dims swapped), the source pages released behind. Its dtype must be
// one a checkpoint holds (checkpoint_dtype).
void copy_hf_tensor(const ShardedSafetensors& files, const std::string& hf, bool transposed, CheckpointWriter& writer,
                    const std::string& key, NonFiniteScan& scan);

}  // namespace dg
