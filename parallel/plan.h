// The parallel plan of DiffusionGemma, declared in one place (as torchtitan's parallelize.py applies one
// fully_shard per transformer block on a device mesh):
//
//   unit               tensors                                            group            reshard
//   root               embed_tokens (tied head), final norm,             world            after the
//                      self-conditioning MLP and its pre-norm                              micro-batch
//   layers.L           attention, norms, dense MLP, router (frozen),     world            --reshard-after-forward
//                      layer scalars (frozen)
//   layers.L.experts   moe.experts.* of the rank's E/ep experts          expert replicas  --reshard-after-forward
//
// Frozen tensors (sft_trainable false) live in the units like the others, so that no rank holds a whole
// copy of anything; the optimizer skips them and their gradients stay zero.
#pragma once
#include <vector>

#include "layers/model_config.h"
#include "parallel/fsdp.h"

namespace dg {

struct ParallelPlanOptions {
  bool reshard_after_forward = true;  // layer units: free the compute copy after each forward use
};

// trainable(name): which tensors the optimizer updates (optim's sft_trainable for SFT).
std::vector<UnitSpec> diffusion_gemma_plan(const ModelConfig& c, const ParallelPlanOptions& o,
                                           bool (*trainable)(const std::string& name));

}  // namespace dg
