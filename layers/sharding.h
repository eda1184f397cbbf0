// What the training pass asks of whoever holds the parameters and the experts (DESIGN.md "Parallelism").
// layers/ never communicates: parallel/fsdp implements ParamSchedule and parallel/expert_parallel
// implements ExpertExchange over a Comm. Without them (nullptr) every weight is resident in the
// ModelWeights the pass is given and every expert is local: the single-rank case.
#pragma once
#include <cstdint>
#include <vector>

#include "layers/tensor.h"

namespace dg {

// Residency of the parameters around each use of a unit. The pass calls, in order, for every use:
//   forward_begin(u)  ...layer u's forward...  forward_end(u)
//   backward_begin(u) ...layer u's backward (all passes of this micro-batch)...  backward_end(u)
// u = kRootUnit for the embeddings, the final norm and the self-conditioning MLP (begin before the
// first use in a micro-batch, end after the last), u = layer index otherwise (its dense and its expert
// parameters). After *_begin(u) returns, the weights of u are bound in the ModelWeights the pass reads,
// and after backward_begin(u) also the gradient tensors of u in the ModelGrads it accumulates into
// (zeroed at binding). backward_end(u) means: u's gradient of this micro-batch is complete.
struct ParamSchedule {
  static constexpr int kRootUnit = -1;
  virtual ~ParamSchedule() = default;
  virtual void forward_begin(int unit) = 0;
  virtual void forward_end(int unit) = 0;
  virtual void backward_begin(int unit) = 0;
  virtual void backward_end(int unit) = 0;
};

// The token exchange of one MoE layer under expert parallelism: the rows a rank routed (sorted by
// global expert id, as moe_permute_plan lays them out) go to the ranks that own those experts, come
// back in the same order after the experts ran. Experts are contiguous per owner: owner p holds
// [p·E_local, (p+1)·E_local).
struct ExpertRoute {
  std::vector<std::int64_t> send_rows;        // [peers] rows this rank sends to each owner
  std::vector<std::int64_t> recv_rows;        // [peers] rows this rank receives from each source
  std::vector<std::int64_t> recv_by_expert;   // [peers · E_local] rows from source p for local expert e
  Tensor local_counts;                        // i32 [E_local] rows per local expert (grouped GEMM groups)
  std::int64_t received = 0;                  // Σ recv_rows
};

struct ExpertExchange {
  virtual ~ExpertExchange() = default;
  virtual std::int64_t first_expert() const = 0;   // global id of this rank's first local expert
  virtual std::int64_t local_experts() const = 0;  // E_local = E / ep
  // Collective over the expert-parallel group: exchanges the per-expert row counts (i32 [E]).
  virtual ExpertRoute route(const Tensor& counts) = 0;
  // rows [N, H] sorted by global expert -> out [received, H] sorted by local expert, then by source rank
  // (a fixed order: results never depend on arrival order).
  virtual void to_owners(const ExpertRoute& r, const Tensor& rows, Tensor& out) = 0;
  // The reverse: rows [received, H] in to_owners' order -> out [N, H] in the sender's original order.
  virtual void to_sources(const ExpertRoute& r, const Tensor& rows, Tensor& out) = 0;
};

// How a training step executes besides the weights: the parameter schedule and the expert exchange (both
// may be null: everything local), and activation recompute (keep only each layer's input, and the
// encoder's K/V, in the forward; recompute the layer's forward just before its backward: about one more
// forward of compute for a fraction of the activation memory).
struct TrainParallel {
  ParamSchedule* params = nullptr;
  ExpertExchange* experts = nullptr;
  bool recompute_layers = false;
};

}  // namespace dg
