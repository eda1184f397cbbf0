// AdamW on fp32 master shards with global-norm clipping (spec/training.md §6, §7.4; DESIGN.md
// "Parallelism"). One FlatParams is one FSDP unit: its trainable tensors laid end to end in a flat
// fp32 buffer, zero-padded to a multiple of the unit's group size; rank r of the group owns elements
// [r·n/size, (r+1)·n/size) and keeps, for that slice only, the master weights, the Adam moments and the
// reduced gradient. A 1-rank group is the degenerate case (it owns everything).
//
// One optimizer step (optimizer_step, or the members one by one):
//   1. reduce_grads   every rank's full model gradients are packed into the flat layout and
//                     reduce-scattered with SUM into the owners' slices, then multiplied by grad_scale.
//                     Scaling (§7.4): the reference divides the loss by the *global* token counts and
//                     multiplies it by dp, then mean-reduces over dp; that is exactly a SUM of gradients
//                     of the globally normalised loss, which is what dgemma's loss produces. So dense
//                     units use grad_scale = 1; an expert unit whose backward already summed over its
//                     EP peers sets grad_scale to undo any extra factor (the reference divides by
//                     dp/ep_shard because its loss carries the factor dp).
//   2. global norm    ||g||₂ over every owned slice of every unit: each rank sums g² in fp64 over its
//                     slices, the per-rank sums are all-gathered (as raw fp64 bits) over the world
//                     comm and added in rank order, so every rank gets the same norm. This assumes
//                     the owned slices of all ranks partition the trainable parameters (no unit is
//                     held by two groups). clip = min(1, max_grad_norm / (norm + 1e-6)), then every
//                     owned gradient is multiplied by clip (torch clip_grad_norm_ semantics).
//   3. AdamW          on the owned slice, exactly torch.optim.AdamW (single-tensor path):
//                       t += 1;  p *= 1 - lr·wd (decoupled, only where the tensor has weight decay)
//                       m += (1-β1)(g - m);  v = β2·v + (1-β2)·g²
//                       p -= lr/(1-β1ᵗ) · m / (sqrt(v)/sqrt(1-β2ᵗ) + eps)
//                     Scalars are computed in double (Python floats) and the element math in fp32.
//   4. publish        the updated masters are all-gathered and copied into the model's tensors.
//
// Frozen tensors (trainable = false) are not in the flat layout: never updated, never counted in the
// norm, their gradients never read. Which tensors train in SFT: sft_trainable() below.
//
// Checkpoints: state_slices() lists, for every tensor this rank owns a piece of, the element range
// [begin, end) of the tensor's own row-major flattening and views of the master / exp_avg /
// exp_avg_sq values for it. A checkpoint stores them as flat slices of the named global tensors, so
// it does not depend on the unit layout, the padding or the number of ranks. Loading on any mesh:
// build the units, read each listed slice into the views, set_step(), then publish() to refresh the
// model's tensors.
//
// Host (CPU, fp32) buffers only for now: the CUDA path (device buffers, bf16 compute copies) is open.
#pragma once
#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "layers/tensor.h"
#include "parallel/comm.h"

namespace dg {

// torch.optim.AdamW + clip_grad_norm_ settings; defaults are the reference recipe (§6.2).
struct AdamWOptions {
  double beta1 = 0.95;
  double beta2 = 0.99;
  double eps = 1e-8;
  double weight_decay = 1e-4;  // applied to every trainable tensor in the reference (no exclusions)
  double max_grad_norm = 1.0;
};
// ConfigError naming the offending option.
void validate(const AdamWOptions& o);

// SFT trainability of a native tensor name (spec/training.md §6.1 and DESIGN.md): everything trains
// except the router (moe.gate.proj.weight, moe.gate.scale, moe.gate.per_expert_scale: dgemma keeps
// per_expert_scale as its own frozen tensor instead of folding it into the trainable down_projs) and
// the per-layer scalars (layer_scalar, encoder_layer_scalar: buffers in the reference).
bool sft_trainable(const std::string& name);

// One tensor handed to a FlatParams.
struct ParamEntry {
  std::string name;   // native name (checkpoint key)
  Tensor param;       // CPU f32, every rank holds the whole tensor
  Tensor grad;        // CPU f32 of param's element count, this rank's (unreduced) gradient; may be
                      // undefined for frozen tensors
  bool trainable = true;
  bool weight_decay = true;  // §6.2: true for every tensor in the reference recipe
};

// A trainable tensor's place in the flat layout.
struct FlatEntry {
  std::string name;
  Shape shape;
  std::int64_t offset = 0;  // first element in the flat buffer
  std::int64_t numel = 0;
  bool weight_decay = true;
};

// This rank's piece of one tensor's optimizer state (see the file comment).
struct StateSlice {
  std::string name;
  Shape shape;                        // the tensor's global shape
  std::int64_t begin = 0, end = 0;    // elements of the tensor's row-major flattening
  Tensor master, exp_avg, exp_avg_sq; // f32 [end - begin] views into the owned state (writable)
};

struct StepStats {
  double grad_norm = 0;  // global L2 norm before clipping
  double clip_coef = 1;  // the factor the gradients were multiplied by
};

class FlatParams {
 public:
  // `comm` is the group the unit is sharded over; it must outlive the FlatParams. Frozen entries are
  // dropped. The masters start as a copy of the params (load_masters()); moments at zero, step 0.
  FlatParams(std::vector<ParamEntry> entries, Comm& comm, double grad_scale = 1.0);

  const std::vector<FlatEntry>& layout() const { return layout_; }
  std::int64_t numel() const { return numel_; }          // trainable elements
  std::int64_t padded_numel() const { return chunk_ * comm_->size(); }
  std::int64_t shard_begin() const { return chunk_ * comm_->rank(); }
  std::int64_t shard_end() const { return shard_begin() + chunk_; }
  Comm& comm() const { return *comm_; }

  // Owned slices (f32 [shard_end - shard_begin]; padding elements stay zero).
  const Tensor& master() const { return master_; }
  const Tensor& exp_avg() const { return exp_avg_; }
  const Tensor& exp_avg_sq() const { return exp_avg_sq_; }
  const Tensor& grad() const { return grad_; }  // after reduce_grads (and clipping after the update)

  std::int64_t step() const { return step_; }  // AdamW updates done (torch's state["step"])
  void set_step(std::int64_t t) { step_ = t; }

  // Masters := this rank's slice of the model params (all ranks hold the full params).
  void load_masters();
  // Steps 1-4 of the file comment, one at a time (collective over comm() where noted).
  void reduce_grads();                                   // collective
  double local_grad_sq() const;                          // sum of g² over the owned slice, fp64
  void adamw_update(const AdamWOptions& o, double lr, double clip_coef);
  void publish();                                        // collective

  std::vector<StateSlice> state_slices() const;

 private:
  struct Piece {  // the part of one layout entry inside the owned slice
    std::size_t entry;
    std::int64_t begin, end;  // flat (global) element range
  };
  std::vector<ParamEntry> entries_;  // trainable only, same order as layout_
  std::vector<FlatEntry> layout_;
  std::vector<Piece> pieces_;
  Comm* comm_;
  double grad_scale_;
  std::int64_t numel_ = 0, chunk_ = 0, step_ = 0;
  Tensor master_, exp_avg_, exp_avg_sq_, grad_;
};

// The global L2 norm over the owned gradients of `units` (collective over `world`) and the clip
// coefficient min(1, max_norm / (norm + 1e-6)).
StepStats global_grad_norm(Comm& world, std::span<FlatParams* const> units, double max_norm);

// One full optimizer step over `units` with learning rate `lr`: reduce_grads, global norm + clip,
// adamw_update, publish. Every rank of `world` calls it with its units in the same order.
StepStats optimizer_step(Comm& world, std::span<FlatParams* const> units, const AdamWOptions& o, double lr);

}  // namespace dg
