// AdamW on fp32 master shards, global-norm clipping, optimizer state slices (see adamw.h).
#include "optim/adamw.h"

#include <bit>
#include <cmath>
#include <cstring>
#include <set>

#include "layers/error.h"

namespace dg {

void validate(const AdamWOptions& o) {
  auto finite = [](double x) { return std::isfinite(x); };
  if (!finite(o.beta1) || o.beta1 < 0 || o.beta1 >= 1)
    fail_config("optimizer option beta1 = {}: must be in [0, 1)", o.beta1);
  if (!finite(o.beta2) || o.beta2 < 0 || o.beta2 >= 1)
    fail_config("optimizer option beta2 = {}: must be in [0, 1)", o.beta2);
  if (!finite(o.eps) || o.eps < 0) fail_config("optimizer option eps = {}: must be >= 0", o.eps);
  if (!finite(o.weight_decay) || o.weight_decay < 0)
    fail_config("optimizer option weight_decay = {}: must be >= 0", o.weight_decay);
  if (!finite(o.max_grad_norm) || o.max_grad_norm <= 0)
    fail_config("optimizer option max_grad_norm = {}: must be a finite number > 0", o.max_grad_norm);
}

bool sft_trainable(const std::string& name) {
  auto ends_with = [&](std::string_view s) {
    return name.size() >= s.size() && name.compare(name.size() - s.size(), s.size(), s) == 0;
  };
  return !(ends_with(".moe.gate.proj.weight") || ends_with(".moe.gate.scale") ||
           ends_with(".moe.gate.per_expert_scale") || ends_with(".layer_scalar") ||
           ends_with(".encoder_layer_scalar"));
}

static void check_host_f32(const Tensor& t, const std::string& name, const char* what) {
  DG_CHECK(t.defined() && t.is_cpu() && t.dtype() == DType::F32, "optimizer: {} of {} is {} (needs CPU f32)", what,
           name, t.defined() ? t.describe() : std::string("undefined"));
}

FlatParams::FlatParams(std::vector<ParamEntry> entries, Comm& comm, double grad_scale)
    : comm_(&comm), grad_scale_(grad_scale) {
  DG_CHECK(comm.device() == Device::CPU, "FlatParams needs a host comm");
  std::set<std::string> names;
  for (ParamEntry& e : entries) {
    DG_CHECK(names.insert(e.name).second, "optimizer: tensor {} listed twice", e.name);
    if (!e.trainable) continue;
    check_host_f32(e.param, e.name, "parameter");
    check_host_f32(e.grad, e.name, "gradient");
    DG_CHECK(e.grad.numel() == e.param.numel(), "optimizer: gradient {} of {} does not match parameter {}",
             e.grad.describe(), e.name, e.param.describe());
    layout_.push_back({e.name, e.param.shape(), numel_, e.param.numel(), e.weight_decay});
    numel_ += e.param.numel();
    entries_.push_back(std::move(e));
  }
  const std::int64_t size = comm.size();
  chunk_ = (numel_ + size - 1) / size;
  const std::int64_t lo = shard_begin(), hi = shard_end();
  for (std::size_t i = 0; i < layout_.size(); ++i) {
    const std::int64_t b = std::max(lo, layout_[i].offset), e = std::min(hi, layout_[i].offset + layout_[i].numel);
    if (b < e) pieces_.push_back({i, b, e});
  }
  master_ = Tensor::zeros({chunk_}, DType::F32);
  exp_avg_ = Tensor::zeros({chunk_}, DType::F32);
  exp_avg_sq_ = Tensor::zeros({chunk_}, DType::F32);
  grad_ = Tensor::zeros({chunk_}, DType::F32);
  load_masters();
}

void FlatParams::load_masters() {
  float* m = master_.data<float>();
  const std::int64_t lo = shard_begin();
  for (const Piece& p : pieces_) {
    const float* src = entries_[p.entry].param.data<float>() + (p.begin - layout_[p.entry].offset);
    std::memcpy(m + (p.begin - lo), src, static_cast<std::size_t>(p.end - p.begin) * sizeof(float));
  }
}

void FlatParams::reduce_grads() {
  Tensor flat = Tensor::zeros({padded_numel()}, DType::F32);
  float* f = flat.data<float>();
  for (std::size_t i = 0; i < entries_.size(); ++i)
    std::memcpy(f + layout_[i].offset, entries_[i].grad.data<float>(),
                static_cast<std::size_t>(layout_[i].numel) * sizeof(float));
  reduce_scatter(*comm_, flat, grad_, ReduceOp::Sum);
  if (grad_scale_ != 1.0) {
    const auto s = static_cast<float>(grad_scale_);
    float* g = grad_.data<float>();
    for (std::int64_t i = 0; i < chunk_; ++i) g[i] *= s;
  }
}

double FlatParams::local_grad_sq() const {
  const float* g = grad_.data<float>();
  double sum = 0;
  for (std::int64_t i = 0; i < chunk_; ++i) sum += static_cast<double>(g[i]) * static_cast<double>(g[i]);
  return sum;
}

void FlatParams::adamw_update(const AdamWOptions& o, double lr, double clip_coef) {
  ++step_;
  const auto t = static_cast<double>(step_);
  // Python-float scalars as torch's single-tensor AdamW computes them, cast to fp32 for the element math.
  const auto decay = static_cast<float>(1.0 - lr * o.weight_decay);
  const double w1d = 1.0 - o.beta1;  // exp_avg.lerp_(grad, 1 - beta1)
  const auto w1 = static_cast<float>(w1d), one_minus_w1 = static_cast<float>(1.0 - w1d);
  const bool lerp_low = std::abs(w1d) < 0.5;
  const auto b2 = static_cast<float>(o.beta2), w2 = static_cast<float>(1.0 - o.beta2);
  const double bias_correction1 = 1.0 - std::pow(o.beta1, t);
  const double bias_correction2 = 1.0 - std::pow(o.beta2, t);
  const auto step_size = static_cast<float>(lr / bias_correction1);
  const auto bc2_sqrt = static_cast<float>(std::sqrt(bias_correction2));
  const auto eps = static_cast<float>(o.eps);
  const auto clip = static_cast<float>(clip_coef);

  float* p = master_.data<float>();
  float* m = exp_avg_.data<float>();
  float* v = exp_avg_sq_.data<float>();
  float* g = grad_.data<float>();
  const std::int64_t lo = shard_begin();
  for (const Piece& piece : pieces_) {
    const bool wd = layout_[piece.entry].weight_decay && o.weight_decay != 0;
    for (std::int64_t j = piece.begin - lo; j < piece.end - lo; ++j) {
      const float gj = g[j] * clip;
      g[j] = gj;
      if (wd) p[j] *= decay;
      m[j] = lerp_low ? m[j] + w1 * (gj - m[j]) : gj - (gj - m[j]) * one_minus_w1;
      v[j] = v[j] * b2 + w2 * gj * gj;
      const float denom = std::sqrt(v[j]) / bc2_sqrt + eps;
      p[j] = p[j] - step_size * (m[j] / denom);
    }
  }
}

void FlatParams::publish() {
  Tensor flat = Tensor::empty({padded_numel()}, DType::F32);
  all_gather(*comm_, master_, flat);
  const float* f = flat.data<float>();
  for (std::size_t i = 0; i < entries_.size(); ++i)
    std::memcpy(entries_[i].param.data<float>(), f + layout_[i].offset,
                static_cast<std::size_t>(layout_[i].numel) * sizeof(float));
}

std::vector<StateSlice> FlatParams::state_slices() const {
  std::vector<StateSlice> out;
  const std::int64_t lo = shard_begin();
  for (const Piece& p : pieces_) {
    const FlatEntry& e = layout_[p.entry];
    const std::int64_t n = p.end - p.begin, at = p.begin - lo;
    auto view = [&](const Tensor& t) { return Tensor::view_of(t.data<float>() + at, {n}, DType::F32); };
    out.push_back({e.name, e.shape, p.begin - e.offset, p.end - e.offset, view(master_), view(exp_avg_),
                   view(exp_avg_sq_)});
  }
  return out;
}

StepStats global_grad_norm(Comm& world, std::span<FlatParams* const> units, double max_norm) {
  DG_CHECK(world.device() == Device::CPU, "global_grad_norm needs a host comm");
  double local = 0;
  for (const FlatParams* u : units) local += u->local_grad_sq();
  // All-gather the raw fp64 bits (Comm has no f64 type) and add in rank order: the same on every rank.
  std::vector<std::int64_t> all(static_cast<std::size_t>(world.size()));
  const auto bits = std::bit_cast<std::int64_t>(local);
  world.all_gather(&bits, all.data(), 1, DType::I64);
  double total = 0;
  for (std::int64_t b : all) total += std::bit_cast<double>(b);
  StepStats s;
  s.grad_norm = std::sqrt(total);
  s.clip_coef = std::min(1.0, max_norm / (s.grad_norm + 1e-6));
  return s;
}

StepStats optimizer_step(Comm& world, std::span<FlatParams* const> units, const AdamWOptions& o, double lr) {
  for (FlatParams* u : units) u->reduce_grads();
  const StepStats s = global_grad_norm(world, units, o.max_grad_norm);
  for (FlatParams* u : units) {
    u->adamw_update(o, lr, s.clip_coef);
    u->publish();
  }
  return s;
}

}  // namespace dg
