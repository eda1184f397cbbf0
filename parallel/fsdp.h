// FSDP: parameters, gradients and optimizer state sharded at rest (DESIGN.md "Parallelism").
//
// A unit is a group of tensors laid end to end in one flat fp32 buffer, zero-padded to a multiple of
// its group's size; rank r of the group owns the slice [r·chunk, (r+1)·chunk) and keeps, for that
// slice only, the fp32 master weights, the Adam moments and the reduced gradient. Nothing else of the
// unit lives on the rank at rest. Around each use (the ParamSchedule of layers/sharding.h):
//
//   forward_begin(u)   the unit's compute copy is all-gathered (or the prefetch issued earlier is
//                      waited for) and its tensors are bound into the ModelWeights the pass reads; the
//                      next unit of the pass is prefetched with a non-blocking all-gather
//   forward_end(u)     released again when the unit reshards after forward (the plan says)
//   backward_begin(u)  gathered again (prefetching the unit below) and a zeroed gradient buffer bound
//                      into the ModelGrads
//   backward_end(u)    the unit's gradient is complete: a non-blocking reduce-scatter (SUM) starts, the
//                      parameters are released; the reduce-scatter completes at the next backward_end
//                      (overlapping the next unit's backward) and is added into the owners' slices
//                      (accumulating over micro-batches)
//
// Expert units are sharded over the expert-replica group and hold only the ep rank's E/ep experts;
// dense units and the root over the world. The plan (which tensors form which unit, on which group,
// whether it reshards after forward) is data: parallel/plan.h declares it for the model.
#pragma once
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "layers/model.h"
#include "layers/sharding.h"
#include "parallel/mesh.h"

namespace dg {

enum class UnitGroup { World, ExpertReplica };

// One tensor of a unit, as the plan declares it (a ParamSpec of layers/model.h plus its role).
struct UnitTensor {
  ParamSpec param;
  bool trainable = true;
  bool expert = false;  // dim 0 is the expert dimension: the unit holds the ep rank's experts only
};

struct UnitSpec {
  std::string name;  // "root", "layers.3", "layers.3.experts"
  int unit = ParamSchedule::kRootUnit;  // the ParamSchedule id it serves (layer index, or root)
  UnitGroup group = UnitGroup::World;
  bool reshard_after_forward = true;
  std::vector<UnitTensor> tensors;
};

// A piece of one tensor that this rank owns: elements [begin, end) of the tensor's row-major
// flattening, and views of the owned state for them (f32 [end - begin]).
struct OwnedSlice {
  std::string name;
  Shape shape;  // the tensor's global shape
  std::int64_t begin = 0, end = 0;
  bool trainable = true;
  Tensor master, exp_avg, exp_avg_sq, grad;
};

// Fills dst[0 .. end-begin) with elements [begin, end) of the named tensor's flattening (global shape).
using SliceLoader = std::function<void(const std::string& name, const Shape& shape, std::int64_t begin,
                                       std::int64_t end, float* dst)>;

// Traffic of one rank, in bytes it received / contributed (for bench and the progress line).
struct FsdpTraffic {
  double gathered_bytes = 0, reduced_bytes = 0;
  std::int64_t gathers = 0, reduce_scatters = 0;
};

class FsdpUnit {
 public:
  FsdpUnit(UnitSpec spec, Comm& group, std::int64_t ep, std::int64_t ep_rank);

  const UnitSpec& spec() const { return spec_; }
  Comm& group() const { return *group_; }
  std::int64_t numel() const { return numel_; }  // elements of the unit on this ep rank (unpadded)
  std::int64_t chunk() const { return chunk_; }  // owned elements (padded share)
  std::int64_t padded_numel() const { return chunk_ * group_->size(); }

  std::vector<OwnedSlice> owned() const;       // this rank's pieces of each tensor
  void load(const SliceLoader& loader);        // masters of the owned slices
  void zero_grad() { grad_.zero_(); }
  double local_grad_sq() const;                // Σ g² over the owned trainable elements, fp64

  bool gathered() const { return full_.defined() && full_.numel() > 0; }
  void gather_start(FsdpTraffic& t);           // non-blocking all-gather of the compute copy
  void gather_finish(ModelWeights& w);         // wait and bind the tensors into w
  void release(ModelWeights& w);               // unbind and free the compute copy
  void bind_grads(ModelGrads& g);              // a zeroed full-size gradient buffer, bound into g
  // Non-blocking reduce-scatter of the gradient buffer (unbound from g at once); finish adds the result
  // into the owned gradient slice and frees the buffer.
  void reduce_grads_start(ModelGrads& g, FsdpTraffic& t);
  void reduce_grads_finish();
  void reduce_grads(ModelGrads& g, FsdpTraffic& t) {  // both, blocking
    reduce_grads_start(g, t);
    reduce_grads_finish();
  }

 private:
  struct Member {
    UnitTensor t;
    Shape local_shape, local_slot_shape;
    std::int64_t global_begin = 0;  // first element of the local part in the tensor's flattening
    std::int64_t offset = 0, numel = 0;  // in the unit's flat buffer
  };
  void bind(ModelWeights& w, const Tensor& flat) const;
  UnitSpec spec_;
  Comm* group_;
  std::vector<Member> members_;
  std::int64_t numel_ = 0, chunk_ = 0;
  Tensor master_, exp_avg_, exp_avg_sq_, grad_;  // owned slice, f32 [chunk]
  Tensor full_, full_grad_;                       // compute copy and gradient buffer while in use
  Tensor reduced_;                                // the reduce-scatter's result while in flight
  std::unique_ptr<PendingCollective> pending_, pending_grad_;
};

// The sharded model: every unit of a plan on a mesh, serving the training pass as its ParamSchedule.
class FsdpModel final : public ParamSchedule {
 public:
  FsdpModel(const ModelConfig& c, std::vector<UnitSpec> plan, Mesh& mesh);

  // What the pass reads and accumulates into: tensors bound only while their unit is in use.
  ModelWeights& weights() { return weights_; }
  ModelGrads& grads() { return grads_; }
  const std::vector<std::unique_ptr<FsdpUnit>>& units() const { return units_; }
  const FsdpTraffic& traffic() const { return traffic_; }

  void load(const SliceLoader& loader);
  void zero_grad();
  // Gathers every unit (the whole model: only for small models, tests and evaluation) / releases it.
  void gather_all();
  void release_all();

  void forward_begin(int unit) override;
  void forward_end(int unit) override;
  void backward_begin(int unit) override;
  void backward_end(int unit) override;
  // Completes the gradient reduce-scatters still in flight (before reading the owned gradients).
  void finish_grads();

 private:
  std::vector<FsdpUnit*> units_of(int unit);
  void ensure_gathered(int unit);
  void prefetch(int unit);
  int num_layers_;
  Mesh& mesh_;
  std::vector<std::unique_ptr<FsdpUnit>> units_;
  std::vector<FsdpUnit*> reducing_;  // reduce-scatters in flight
  ModelWeights weights_;
  ModelGrads grads_;
  FsdpTraffic traffic_;
};

// The global L2 norm of the owned gradients of every unit (collective over the world): each rank sums
// g² in fp64, the sums are all-gathered and added in rank order, so every rank gets the same norm.
// The owned slices of all ranks partition the trainable parameters (each expert slice is owned by one
// rank of its replica group, each dense slice by one rank of the world).
double global_grad_norm(Comm& world, const FsdpModel& model);

}  // namespace dg
