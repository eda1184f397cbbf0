// FSDP units and the sharded model (see fsdp.h).
#include "parallel/fsdp.h"

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstring>

#include "layers/error.h"
#include "layers/ops.h"

namespace dg {

// ---- FsdpUnit ----------------------------------------------------------------------------------------

FsdpUnit::FsdpUnit(UnitSpec spec, Comm& group, std::int64_t ep, std::int64_t ep_rank)
    : spec_(std::move(spec)), group_(&group) {
  DG_CHECK(group.device() == Device::CPU, "FSDP unit {}: needs a host comm for now", spec_.name);
  for (const UnitTensor& t : spec_.tensors) {
    Member m;
    m.t = t;
    m.local_shape = t.param.shape;
    m.local_slot_shape = t.param.slot_shape;
    if (t.expert) {
      DG_CHECK(!m.local_shape.empty() && m.local_shape[0] % ep == 0, "FSDP unit {}: {} has {} experts, not a multiple of ep {}",
               spec_.name, t.param.name, m.local_shape.empty() ? 0 : m.local_shape[0], ep);
      DG_CHECK(t.param.slot_offset == 0 && t.param.slot_shape == t.param.shape, "expert tensor {} must be a whole member",
               t.param.name);
      m.local_shape[0] /= ep;
      m.local_slot_shape[0] /= ep;
      m.global_begin = ep_rank * shape_numel(m.local_shape);
    }
    m.numel = shape_numel(m.local_shape);
    m.offset = numel_;
    numel_ += m.numel;
    members_.push_back(std::move(m));
  }
  const std::int64_t size = group.size();
  chunk_ = (numel_ + size - 1) / size;
  master_ = Tensor::zeros({chunk_}, DType::F32);
  exp_avg_ = Tensor::zeros({chunk_}, DType::F32);
  exp_avg_sq_ = Tensor::zeros({chunk_}, DType::F32);
  grad_ = Tensor::zeros({chunk_}, DType::F32);
  for (Tensor* t : {&master_, &exp_avg_, &exp_avg_sq_, &grad_}) t->mark_device_resident();
}

std::vector<OwnedSlice> FsdpUnit::owned() const {
  std::vector<OwnedSlice> out;
  const std::int64_t lo = chunk_ * group_->rank(), hi = lo + chunk_;
  for (const Member& m : members_) {
    const std::int64_t b = std::max(lo, m.offset), e = std::min(hi, m.offset + m.numel);
    if (b >= e) continue;
    const std::int64_t n = e - b, at = b - lo;
    auto view = [&](const Tensor& t) { return t.view_flat(at, {n}); };
    out.push_back({m.t.param.name, m.t.param.shape, m.global_begin + b - m.offset, m.global_begin + e - m.offset,
                   m.t.trainable, view(master_), view(exp_avg_), view(exp_avg_sq_), view(grad_)});
  }
  return out;
}

void FsdpUnit::load(const SliceLoader& loader) {
  for (OwnedSlice& s : owned()) loader(s.name, s.shape, s.begin, s.end, s.master.data<float>());
}

double FsdpUnit::local_grad_sq() const {
  // The whole owned slice at once (one host read): frozen tensors' gradients were dropped at the reduce
  // and the padding stays zero.
  note_host_read("grad_norm");
  return sum_squares(grad_);
}

void FsdpUnit::bind(ModelWeights& w, const Tensor& flat) const {
  for (const Member& m : members_) {
    m.t.param.slot(w) = flat.view_flat(m.offset - m.t.param.slot_offset, m.local_slot_shape);
  }
}

void FsdpUnit::gather_start(FsdpTraffic& t) {
  if (gathered() || pending_) return;
  full_ = Tensor::empty({padded_numel()}, DType::F32);
  pending_ = group_->all_gather_async(master_.raw(), full_.raw(), static_cast<std::size_t>(chunk_), DType::F32);
  t.gathered_bytes += static_cast<double>(padded_numel()) * 4.0;
  ++t.gathers;
}

void FsdpUnit::gather_finish(ModelWeights& w) {
  DG_CHECK(gathered(), "FSDP unit {}: gather_finish without gather_start", spec_.name);
  if (!pending_) return;  // already bound
  pending_->wait();
  pending_.reset();
  bind(w, full_);
}

void FsdpUnit::release(ModelWeights& w) {
  if (pending_) {
    pending_->wait();
    pending_.reset();
  }
  for (const Member& m : members_) m.t.param.slot(w) = Tensor();
  full_ = Tensor();
}

void FsdpUnit::bind_grads(ModelGrads& g) {
  if (full_grad_.defined() && full_grad_.numel() > 0) return;
  full_grad_ = Tensor::zeros({padded_numel()}, DType::F32);
  bind(g, full_grad_);
}

void FsdpUnit::reduce_grads_start(ModelGrads& g, FsdpTraffic& t) {
  DG_CHECK(full_grad_.defined() && full_grad_.numel() > 0 && !pending_grad_,
           "FSDP unit {}: no gradient buffer to reduce", spec_.name);
  reduced_ = Tensor::empty({chunk_}, DType::F32);
  pending_grad_ = group_->reduce_scatter_async(full_grad_.raw(), reduced_.raw(), static_cast<std::size_t>(chunk_),
                                               DType::F32, ReduceOp::Sum);
  for (const Member& m : members_) m.t.param.slot(g) = Tensor();
  t.reduced_bytes += static_cast<double>(padded_numel()) * 4.0;
  ++t.reduce_scatters;
}

void FsdpUnit::reduce_grads_finish() {
  if (!pending_grad_) return;
  pending_grad_->wait();
  pending_grad_.reset();
  add_(grad_, reduced_);
  // Frozen tensors take no gradient: whatever the backward left there is dropped (not updated, not in the norm).
  for (OwnedSlice& o : owned())
    if (!o.trainable) o.grad.zero_();
  reduced_ = Tensor();
  full_grad_ = Tensor();
}

// ---- FsdpModel ---------------------------------------------------------------------------------------

FsdpModel::FsdpModel(const ModelConfig& c, std::vector<UnitSpec> plan, Mesh& mesh)
    : num_layers_(c.num_layers), mesh_(mesh) {
  weights_.layers.resize(static_cast<std::size_t>(c.num_layers));
  grads_.layers.resize(static_cast<std::size_t>(c.num_layers));
  for (UnitSpec& s : plan) {
    DG_CHECK(s.unit >= kRootUnit && s.unit < c.num_layers, "FSDP plan: unit {} serves id {}", s.name, s.unit);
    Comm& group = s.group == UnitGroup::World ? *mesh.world : *mesh.replica;
    units_.push_back(std::make_unique<FsdpUnit>(std::move(s), group, mesh.ep, mesh.ep_rank()));
  }
}

std::vector<FsdpUnit*> FsdpModel::units_of(int unit) {
  std::vector<FsdpUnit*> out;
  for (auto& u : units_)
    if (u->spec().unit == unit) out.push_back(u.get());
  return out;
}

void FsdpModel::load(const SliceLoader& loader) {
  for (auto& u : units_) u->load(loader);
}

void FsdpModel::zero_grad() {
  for (auto& u : units_) u->zero_grad();
}

void FsdpModel::ensure_gathered(int unit) {
  for (FsdpUnit* u : units_of(unit)) u->gather_start(traffic_);
  for (FsdpUnit* u : units_of(unit)) u->gather_finish(weights_);
}

void FsdpModel::prefetch(int unit) {
  if (unit < 0 || unit >= num_layers_) return;
  for (FsdpUnit* u : units_of(unit)) u->gather_start(traffic_);
}

void FsdpModel::gather_all() {
  for (auto& u : units_) u->gather_start(traffic_);
  for (auto& u : units_) u->gather_finish(weights_);
}

void FsdpModel::release_all() {
  for (auto& u : units_) u->release(weights_);
}

void FsdpModel::forward_begin(int unit) {
  ensure_gathered(unit);
  if (unit != kRootUnit) prefetch(unit + 1);
}

void FsdpModel::forward_end(int unit) {
  for (FsdpUnit* u : units_of(unit))
    if (u->spec().reshard_after_forward) u->release(weights_);
}

void FsdpModel::backward_begin(int unit) {
  ensure_gathered(unit);
  if (unit != kRootUnit) prefetch(unit - 1);
  for (FsdpUnit* u : units_of(unit)) u->bind_grads(grads_);
}

void FsdpModel::backward_end(int unit) {
  finish_grads();  // the previous unit's reduce-scatter ran during this unit's backward
  for (FsdpUnit* u : units_of(unit)) {
    u->reduce_grads_start(grads_, traffic_);
    u->release(weights_);
    reducing_.push_back(u);
  }
  if (unit == kRootUnit) finish_grads();  // the last use of the micro-batch
}

void FsdpModel::finish_grads() {
  for (FsdpUnit* u : reducing_) u->reduce_grads_finish();
  reducing_.clear();
}

double global_grad_norm(Comm& world, const FsdpModel& model) {
  double local = 0;
  for (const auto& u : model.units()) local += u->local_grad_sq();
  std::vector<std::int64_t> all(static_cast<std::size_t>(world.size()));
  const auto bits = std::bit_cast<std::int64_t>(local);
  world.all_gather(&bits, all.data(), 1, DType::I64);
  double total = 0;
  for (std::int64_t b : all) total += std::bit_cast<double>(b);
  return std::sqrt(total);
}

}  // namespace dg
