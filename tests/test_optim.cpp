// optim/ + parallel/fsdp: AdamW on the owned fp32 slices of FSDP units against a scalar transcription of
// torch.optim.AdamW + clip_grad_norm_, frozen tensors, sharded (2 / 4 ranks, ep 1 / 2 / 4) vs 1-rank
// updates, units smaller than their group, gradient accumulation over micro-batches, optimizer-state
// round trips across rank counts (and ep sizes) through the owned-slice API, and the warmup + cosine LR
// schedule. Runs under mpiexec with 1, 2 and 4 ranks.
//
// The "model" is a hand-built plan of two units: a dense unit over the world (tensors of awkward sizes:
// 73 elements, so padding on 2 and 4 ranks; one tensor without weight decay, one frozen, two sharing one
// ModelWeights member through slot_offset as mlp.gate_proj / mlp.up_proj do) and an expert unit over the
// expert-replica group (E = 4 experts, the ep rank's E/ep of them). The optimizer step is driven the way
// jobs/sft.cpp drives it: global_grad_norm, clip_coefficient, adamw_update on the owned trainable slices.
//
// Tolerances. The reference performs the same fp32 element operations as adamw_update; the only
// difference is the fp64 summation order of the global norm (partial sums per rank), which moves the
// norm by ~1e-16 relative and the fp32 clip coefficient by at most one ulp: norms are compared to 1e-12,
// weights and moments to 1e-6 relative. Sharded vs 1-rank (each rank contributing its own gradient): the
// reduce-scatter may add the 2 / 4 contributions in another order than the 1-rank sum (a few ulp of the
// contributions' magnitude, which a cancelling sum can turn into a large relative error of the moment),
// so moments are compared to 1e-6 of their tensor's largest magnitude and weights (O(1), moved by
// lr·O(1) per step) to 1e-6 relative per element. Resume on another mesh: the gradient has one source,
// so every reduction is exact, and the state must continue bitwise.
#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <functional>
#include <map>
#include <numbers>

#include "optim/adamw.h"
#include "optim/schedule.h"
#include "parallel/fsdp.h"
#include "parallel/mesh.h"

using namespace dg;

namespace {

std::unique_ptr<Comm>& world() {
  static std::unique_ptr<Comm> w = mpi_world();
  return w;
}

// Deterministic values in [-1, 1) keyed by a few integers (splitmix64).
float hashf(std::uint64_t a, std::uint64_t b, std::uint64_t c) {
  std::uint64_t x = a * 0x9E3779B97F4A7C15ull ^ (b + 0x632BE59BD9B4E019ull) * 0xBF58476D1CE4E5B9ull ^
                    (c + 0x94D049BB133111EBull) * 0x2545F4914F6CDD1Dull;
  x ^= x >> 30, x *= 0xBF58476D1CE4E5B9ull, x ^= x >> 27, x *= 0x94D049BB133111EBull, x ^= x >> 31;
  return static_cast<float>(static_cast<double>(x >> 40) / static_cast<double>(1ull << 23) - 1.0);
}

constexpr std::int64_t kExperts = 4;

using Slot = Tensor& (*)(ModelWeights&);
struct Spec {
  const char* name;
  Shape shape;
  bool trainable, weight_decay, expert;
  Slot slot;  // the ModelWeights member the unit binds the tensor into
  Shape slot_shape;
  std::int64_t slot_offset;
};
// The dense unit: 35 + 13 + 12 + 1 + 6 + 6 = 73 elements (61 trainable); the expert unit: 60 (15 per expert).
const std::vector<Spec> kSpecs = {
    {"a.weight", {5, 7}, true, true, false, [](ModelWeights& w) -> Tensor& { return w.embed_tokens; }, {5, 7}, 0},
    {"b.norm", {13}, true, false, false, [](ModelWeights& w) -> Tensor& { return w.norm; }, {13}, 0},
    {"router", {3, 4}, false, true, false, [](ModelWeights& w) -> Tensor& { return w.sc_pre_norm; }, {3, 4}, 0},
    {"c.scalar", {1}, true, true, false, [](ModelWeights& w) -> Tensor& { return w.sc_down; }, {1}, 0},
    {"e.gate", {2, 3}, true, true, false, [](ModelWeights& w) -> Tensor& { return w.sc_gate_up; }, {4, 3}, 0},
    {"e.up", {2, 3}, true, true, false, [](ModelWeights& w) -> Tensor& { return w.sc_gate_up; }, {4, 3}, 6},
    {"d.experts", {kExperts, 3, 5}, true, true, true,
     [](ModelWeights& w) -> Tensor& { return w.layers[0].experts_gate_up; }, {kExperts, 3, 5}, 0},
};

std::size_t index_of(const std::string& name) {
  for (std::size_t i = 0; i < kSpecs.size(); ++i)
    if (name == kSpecs[i].name) return i;
  FAIL("unknown tensor " << name);
  return 0;
}
std::int64_t numel_of(std::size_t i) { return shape_numel(kSpecs[i].shape); }

ParamSpec param_spec(const Spec& s) {
  return {s.name, s.shape,
          [slot = s.slot, off = s.slot_offset, shape = s.shape](const ModelWeights& w) {
            Tensor& t = slot(const_cast<ModelWeights&>(w));
            return Tensor::view_of(t.data<float>() + off, shape, DType::F32);
          },
          s.slot, s.slot_shape, s.slot_offset};
}

std::vector<UnitSpec> make_plan() {
  UnitSpec dense{"root", ParamSchedule::kRootUnit, UnitGroup::World, true, {}};
  UnitSpec experts{"layers.0.experts", 0, UnitGroup::ExpertReplica, true, {}};
  for (const Spec& s : kSpecs) (s.expert ? experts : dense).tensors.push_back({param_spec(s), s.trainable, s.expert});
  return {dense, experts};
}

ModelConfig tiny_config() {
  ModelConfig c;
  c.num_layers = 1;  // FsdpModel only reads the layer count (units serve ids -1 and 0)
  c.num_experts = static_cast<int>(kExperts);
  return c;
}

// A mesh over `group` and the plan's FsdpModel on it.
struct Sharded {
  ModelConfig cfg = tiny_config();
  Mesh mesh;
  FsdpModel model;
  Sharded(Comm& group, int ep, std::vector<UnitSpec> plan = make_plan())
      : mesh(make_mesh(group, ep, kExperts, 0)), model(cfg, std::move(plan), mesh) {}
  Comm& world() const { return *mesh.world; }
};

// Rows of the tensor this rank's units hold (E/ep for experts) and their first element in the flattening.
struct Local {
  Shape shape;
  std::int64_t global_begin = 0;
};
Local local_part(const Sharded& s, std::size_t i) {
  Local l{kSpecs[i].shape, 0};
  if (kSpecs[i].expert) {
    l.shape[0] = s.mesh.local_experts();
    l.global_begin = s.mesh.first_expert() * (numel_of(i) / kExperts);
  }
  return l;
}
// The local part of tensor i inside a bound ModelWeights (weights or grads).
Tensor member(ModelWeights& w, const Sharded& s, std::size_t i) {
  Tensor& t = kSpecs[i].slot(w);
  REQUIRE(t.raw() != nullptr);
  return Tensor::view_of(t.data<float>() + kSpecs[i].slot_offset, local_part(s, i).shape, DType::F32);
}

// Initial values: the loader a checkpoint or init job would give the units.
float init_value(std::size_t i, std::int64_t j) { return hashf(7, i, static_cast<std::uint64_t>(j)); }
SliceLoader init_loader(float scale) {
  return [scale](const std::string& name, const Shape& shape, std::int64_t begin, std::int64_t end, float* dst) {
    const std::size_t i = index_of(name);
    CHECK(shape == kSpecs[i].shape);
    for (std::int64_t j = begin; j < end; ++j) dst[j - begin] = scale * init_value(i, j);
  };
}

// Rank r's gradient contribution at step k (the frozen tensor gets a huge one: it must be ignored).
float grad_value(int k, int r, std::size_t tensor, std::int64_t j, float scale) {
  const float g = scale * hashf(1000 + static_cast<std::uint64_t>(k), static_cast<std::uint64_t>(r) * 64 + tensor,
                                static_cast<std::uint64_t>(j));
  return kSpecs[tensor].trainable ? g : 1e3f;
}
const float kScales[] = {0.02f, 0.5f, 3.0f, 0.01f, 8.0f, 0.2f};  // with max_norm 1: some steps clip

// The gradients of one step on a mesh of `ranks` ranks split ep-way. Dense tensors get a contribution
// from every rank, an expert element only from the ranks holding its expert (world rank r holds the
// experts of ep rank r % ep). one_source: the first holder contributes the whole gradient (the values
// of rank 0 above) and the others zeros, so every reduction is exact and the total does not depend on
// the mesh.
struct Feed {
  int ranks = 1, ep = 1;
  bool one_source = false;
  int k = 0;
  float scale = 1;
};
std::int64_t owner_ep_rank(const Feed& f, std::size_t i, std::int64_t j) {
  return j / (numel_of(i) / kExperts) / (kExperts / f.ep);
}
bool holds(const Feed& f, int r, std::size_t i, std::int64_t j) {
  return !kSpecs[i].expert || r % f.ep == owner_ep_rank(f, i, j);
}
float contribution(const Feed& f, int r, std::size_t i, std::int64_t j) {
  if (!f.one_source) return grad_value(f.k, r, i, j, f.scale);
  const std::int64_t first = kSpecs[i].expert ? owner_ep_rank(f, i, j) : 0;
  return r == first ? grad_value(f.k, 0, i, j, f.scale) : 0.f;
}
// The total gradient, the holders' contributions added in rank order.
std::vector<std::vector<float>> total_grad(const Feed& f) {
  std::vector<std::vector<float>> g;
  for (std::size_t i = 0; i < kSpecs.size(); ++i) {
    std::vector<float> t(static_cast<std::size_t>(numel_of(i)), 0.f);
    for (int r = 0; r < f.ranks; ++r)
      for (std::int64_t j = 0; j < numel_of(i); ++j)
        if (holds(f, r, i, j)) t[static_cast<std::size_t>(j)] += contribution(f, r, i, j);
    g.push_back(std::move(t));
  }
  return g;
}

// One micro-batch's backward as the training pass sees it: both units gathered with zeroed gradient
// buffers bound, this rank's gradient written into them, reduce-scattered into the owners' slices.
// value(i, j): this rank's gradient of element j (global flattening) of tensor i.
using GradFn = std::function<float(std::size_t i, std::int64_t j)>;
void backward(Sharded& s, const GradFn& value) {
  FsdpModel& m = s.model;
  m.backward_begin(ParamSchedule::kRootUnit);
  m.backward_begin(0);
  for (std::size_t i = 0; i < kSpecs.size(); ++i) {
    Tensor g = member(m.grads(), s, i);
    const std::int64_t at = local_part(s, i).global_begin;
    for (std::int64_t l = 0; l < g.numel(); ++l) {
      CHECK(g.data<float>()[l] == 0.f);  // zeroed at binding
      g.data<float>()[l] = value(i, at + l);
    }
  }
  m.backward_end(0);
  m.backward_end(ParamSchedule::kRootUnit);
  CHECK(m.grads().embed_tokens.raw() == nullptr);  // unbound again
  CHECK(m.weights().layers[0].experts_gate_up.raw() == nullptr);
}
void backward(Sharded& s, const Feed& f) {
  const int r = s.world().rank();
  backward(s, [&](std::size_t i, std::int64_t j) { return contribution(f, r, i, j); });
}

// One optimizer step as jobs/sft.cpp runs it: global norm, clip coefficient, AdamW on the owned
// trainable slices of every unit (t = the step count after this update).
StepStats optimizer_step(Sharded& s, const AdamWOptions& o, double lr, std::int64_t t) {
  StepStats st;
  st.grad_norm = global_grad_norm(s.world(), s.model);
  st.clip_coef = clip_coefficient(st.grad_norm, o.max_grad_norm);
  std::vector<AdamWSlice> slices;
  for (const auto& unit : s.model.units())
    for (const OwnedSlice& os : unit->owned()) {
      if (!os.trainable) continue;
      const auto it = std::find_if(kSpecs.begin(), kSpecs.end(), [&](const Spec& x) { return os.name == x.name; });
      slices.push_back({os.master, os.exp_avg, os.exp_avg_sq, os.grad, it == kSpecs.end() || it->weight_decay});
    }
  adamw_update(slices, o, lr, st.clip_coef, t);
  return st;
}

// Every tensor's state assembled from the ranks' owned slices (each element written by its one owner,
// zeros elsewhere, summed over `group`: exact), plus how many owners each element had.
struct Full {
  std::vector<float> master, exp_avg, exp_avg_sq, grad, covered;
};
std::map<std::string, Full> gather_state(Comm& group, const FsdpModel& m) {
  std::map<std::string, Full> out;
  for (std::size_t i = 0; i < kSpecs.size(); ++i) {
    const auto n = static_cast<std::size_t>(numel_of(i));
    out[kSpecs[i].name] = {std::vector<float>(n), std::vector<float>(n), std::vector<float>(n), std::vector<float>(n),
                           std::vector<float>(n)};
  }
  for (const auto& unit : m.units())
    for (const OwnedSlice& os : unit->owned()) {
      Full& d = out.at(os.name);
      CHECK(os.shape == kSpecs[index_of(os.name)].shape);
      CHECK(os.trainable == kSpecs[index_of(os.name)].trainable);
      REQUIRE(os.begin < os.end);
      REQUIRE(os.end <= numel_of(index_of(os.name)));
      for (std::int64_t j = os.begin; j < os.end; ++j) {
        const auto k = static_cast<std::size_t>(j);
        const std::int64_t l = j - os.begin;
        d.master[k] = os.master.data<float>()[l];
        d.exp_avg[k] = os.exp_avg.data<float>()[l];
        d.exp_avg_sq[k] = os.exp_avg_sq.data<float>()[l];
        d.grad[k] = os.grad.data<float>()[l];
        d.covered[k] += 1;
      }
    }
  for (auto& [name, d] : out)
    for (std::vector<float>* v : {&d.master, &d.exp_avg, &d.exp_avg_sq, &d.grad, &d.covered})
      group.all_reduce(v->data(), v->data(), v->size(), DType::F32, ReduceOp::Sum);
  return out;
}

// torch.optim.AdamW (single-tensor path) + torch.nn.utils.clip_grad_norm_, one scalar at a time, on the
// full (unsharded) tensors.
struct Reference {
  std::vector<std::vector<float>> p, m, v;
  std::int64_t t = 0;
  explicit Reference(float init_scale = 1.f) {
    for (std::size_t i = 0; i < kSpecs.size(); ++i) {
      p.emplace_back();
      for (std::int64_t j = 0; j < numel_of(i); ++j) p.back().push_back(init_scale * init_value(i, j));
      m.emplace_back(p.back().size(), 0.f);
      v.emplace_back(p.back().size(), 0.f);
    }
  }
  StepStats step(std::vector<std::vector<float>> g, const AdamWOptions& o, double lr) {
    double sq = 0;  // total_norm over the parameters with requires_grad (frozen: no .grad)
    for (std::size_t i = 0; i < kSpecs.size(); ++i)
      if (kSpecs[i].trainable)
        for (float x : g[i]) sq += static_cast<double>(x) * x;
    StepStats s;
    s.grad_norm = std::sqrt(sq);
    const double clip_coef = o.max_grad_norm / (s.grad_norm + 1e-6);  // clip_coef_clamped = clamp(max=1)
    s.clip_coef = std::min(clip_coef, 1.0);
    ++t;
    for (std::size_t i = 0; i < kSpecs.size(); ++i) {
      if (!kSpecs[i].trainable) continue;
      for (std::size_t j = 0; j < p[i].size(); ++j) {
        float& P = p[i][j];
        float& M = m[i][j];
        float& V = v[i][j];
        const float G = g[i][j] * static_cast<float>(s.clip_coef);          // grads.mul_(clip_coef)
        if (kSpecs[i].weight_decay) P *= static_cast<float>(1 - lr * o.weight_decay);  // param.mul_(1 - lr*wd)
        M = M + static_cast<float>(1 - o.beta1) * (G - M);                 // exp_avg.lerp_(grad, 1 - beta1)
        V = V * static_cast<float>(o.beta2) + static_cast<float>(1 - o.beta2) * G * G;  // mul_(b2).addcmul_
        const double bias_correction1 = 1 - std::pow(o.beta1, static_cast<double>(t));
        const double bias_correction2 = 1 - std::pow(o.beta2, static_cast<double>(t));
        const double step_size = lr / bias_correction1;
        const double bias_correction2_sqrt = std::sqrt(bias_correction2);
        const float denom = std::sqrt(V) / static_cast<float>(bias_correction2_sqrt) + static_cast<float>(o.eps);
        P = P - static_cast<float>(step_size) * (M / denom);               // addcdiv_(exp_avg, denom, -step_size)
      }
    }
    return s;
  }
};

bool close(double a, double b, double rel, double abs = 1e-30) {
  return std::abs(a - b) <= rel * std::max(std::abs(a), std::abs(b)) + abs;
}

// The weights every rank computes with (the gathered compute copies of its units) and the owned state
// against the reference.
void check_against(Sharded& s, const Reference& ref, double rel) {
  int bad = 0;
  s.model.gather_all();
  for (std::size_t i = 0; i < kSpecs.size(); ++i) {
    const Tensor w = member(s.model.weights(), s, i);
    const auto at = static_cast<std::size_t>(local_part(s, i).global_begin);
    for (std::int64_t l = 0; l < w.numel(); ++l) {
      const float want = ref.p[i][at + static_cast<std::size_t>(l)];
      if (!close(w.data<float>()[l], want, rel) && bad++ < 5)
        FAIL_CHECK(kSpecs[i].name << "[" << at + static_cast<std::size_t>(l) << "] = " << w.data<float>()[l]
                                  << ", reference " << want);
    }
  }
  s.model.release_all();
  CHECK(s.model.weights().embed_tokens.raw() == nullptr);
  const auto state = gather_state(s.world(), s.model);
  for (std::size_t i = 0; i < kSpecs.size(); ++i) {
    const Full& d = state.at(kSpecs[i].name);
    for (std::size_t j = 0; j < ref.p[i].size(); ++j) {
      CHECK(d.covered[j] == 1.f);  // the owned slices tile every tensor exactly
      bad += !close(d.master[j], ref.p[i][j], rel);
      bad += !close(d.exp_avg[j], ref.m[i][j], rel);
      bad += !close(d.exp_avg_sq[j], ref.v[i][j], rel);
    }
  }
  CHECK(bad == 0);
}

std::string config_error(const std::function<void()>& f) {
  try {
    f();
  } catch (const ConfigError& e) {
    return e.what();
  }
  return "(no ConfigError)";
}

// The ep sizes a world of n ranks can run the plan with (ep divides n and the 4 experts).
std::vector<int> ep_sizes(int n) {
  std::vector<int> out;
  for (int ep : {1, 2, 4})
    if (n % ep == 0 && kExperts % ep == 0) out.push_back(ep);
  return out;
}

}  // namespace

TEST_CASE("AdamW + clipping match torch's algorithm over several steps; frozen tensors untouched") {
  Comm& c = *world();
  for (int ep : ep_sizes(c.size())) {
    CAPTURE(ep);
    Sharded s(c, ep);
    REQUIRE(s.model.units().size() == 2);
    const FsdpUnit& dense = *s.model.units()[0];
    const FsdpUnit& experts = *s.model.units()[1];
    CHECK(dense.numel() == 73);
    CHECK(dense.padded_numel() % c.size() == 0);
    CHECK(dense.chunk() == (73 + c.size() - 1) / c.size());
    CHECK(experts.numel() == 60 / ep);  // only the ep rank's experts
    CHECK(experts.group().size() == c.size() / ep);
    s.model.load(init_loader(1.f));
    Reference ref;

    AdamWOptions o;  // the reference recipe: (0.95, 0.99), eps 1e-8, wd 1e-4, max norm 1
    o.weight_decay = 0.05;  // large enough to matter in a few steps
    int clipped = 0;
    for (int k = 0; k < 6; ++k) {
      const double lr = 1e-3 * (k + 1);
      const Feed f{c.size(), ep, true, k, kScales[k]};
      s.model.zero_grad();
      backward(s, f);
      const StepStats st = optimizer_step(s, o, lr, k + 1);
      const StepStats r = ref.step(total_grad(f), o, lr);
      CHECK(close(st.grad_norm, r.grad_norm, 1e-12));
      CHECK(close(st.clip_coef, r.clip_coef, 1e-12));
      clipped += st.clip_coef < 1;
      check_against(s, ref, 1e-6);  // the frozen router: still its initial values, moments zero
      // The frozen tensor's reduced gradient (1e3 from the backward) is dropped at the reduce: zero, so
      // it is neither applied nor counted in the norm (the norm check above would fail otherwise).
      for (const auto& u : s.model.units())
        for (const OwnedSlice& os : u->owned())
          if (!os.trainable)
            for (std::int64_t j = 0; j < os.grad.numel(); ++j) CHECK(os.grad.data<float>()[j] == 0.0f);
    }
    CHECK(clipped >= 2);
    CHECK(clipped <= 4);
  }
}

TEST_CASE("first AdamW step in closed form: bias corrections cancel, decoupled weight decay") {
  Comm& c = *world();
  const int ep = ep_sizes(c.size()).back();
  Sharded s(c, ep);
  s.model.load(init_loader(1.f));
  AdamWOptions o;
  o.weight_decay = 0.1;
  o.max_grad_norm = 1e9;  // no clipping
  const double lr = 1e-3;
  const Feed f{c.size(), ep, true, 0, 0.7f};
  s.model.zero_grad();
  backward(s, f);
  const StepStats st = optimizer_step(s, o, lr, 1);
  CHECK(st.clip_coef == 1.0);
  const auto g = total_grad(f);
  // m̂ = g and v̂ = g² after one step, so p1 = p0 (1 - lr wd) - lr g / (|g| + eps).
  s.model.gather_all();
  for (std::size_t i = 0; i < kSpecs.size(); ++i) {
    const Tensor w = member(s.model.weights(), s, i);
    const std::int64_t at = local_part(s, i).global_begin;
    for (std::int64_t l = 0; l < w.numel(); ++l) {
      const std::int64_t j = at + l;
      const double p0 = init_value(i, j), gj = g[i][static_cast<std::size_t>(j)];
      double expect = p0;
      if (kSpecs[i].trainable) {
        const double decay = kSpecs[i].weight_decay ? 1 - lr * o.weight_decay : 1.0;
        expect = p0 * decay - lr * gj / (std::abs(gj) + o.eps);
      }
      CHECK(std::abs(w.data<float>()[l] - expect) <= 1e-6 * std::abs(expect) + 1e-9);
    }
  }
  s.model.release_all();
}

TEST_CASE("the sharded update on every rank count and ep size equals the 1-rank update") {
  Comm& c = *world();
  auto self = c.split(c.rank(), 0);  // each rank alone: the 1-rank run
  REQUIRE(self->size() == 1);
  for (int ep : ep_sizes(c.size())) {
    CAPTURE(ep);
    Sharded sharded(c, ep), single(*self, 1);
    sharded.model.load(init_loader(1.f));
    single.model.load(init_loader(1.f));
    const AdamWOptions o;  // the recipe as is
    int clipped = 0;
    for (int k = 0; k < 6; ++k) {
      CAPTURE(k);
      const double lr = 2e-3;
      // Each rank contributes its own gradient (reduce-scattered over the world, or over the expert
      // replicas for the experts); the 1-rank run gets their sum.
      const Feed f{c.size(), ep, false, k, kScales[k]};
      const auto total = total_grad(f);
      sharded.model.zero_grad();
      single.model.zero_grad();
      backward(sharded, f);
      backward(single, [&](std::size_t i, std::int64_t j) { return total[i][static_cast<std::size_t>(j)]; });
      const StepStats a = optimizer_step(sharded, o, lr, k + 1);
      const StepStats b = optimizer_step(single, o, lr, k + 1);
      CHECK(close(a.grad_norm, b.grad_norm, 1e-6));
      CHECK(close(a.clip_coef, b.clip_coef, 1e-6));
      clipped += a.clip_coef < 1;

      const auto sa = gather_state(c, sharded.model), sb = gather_state(*self, single.model);
      int bad = 0;
      for (std::size_t i = 0; i < kSpecs.size(); ++i) {
        const Full &x = sa.at(kSpecs[i].name), &y = sb.at(kSpecs[i].name);
        double m_scale = 0, v_scale = 0;
        for (std::size_t j = 0; j < y.master.size(); ++j) {
          m_scale = std::max(m_scale, std::abs(double(y.exp_avg[j])));
          v_scale = std::max(v_scale, std::abs(double(y.exp_avg_sq[j])));
        }
        for (std::size_t j = 0; j < y.master.size(); ++j) {
          bad += x.covered[j] != 1.f;
          bad += !close(x.master[j], y.master[j], 1e-6);
          bad += !close(x.exp_avg[j], y.exp_avg[j], 0, 1e-6 * m_scale);
          bad += !close(x.exp_avg_sq[j], y.exp_avg_sq[j], 0, 1e-6 * v_scale);
        }
      }
      CHECK(bad == 0);
    }
    CHECK(clipped >= 1);

    // Every rank computes with the same weights as the 1-rank run (its experts' rows of them).
    sharded.model.gather_all();
    single.model.gather_all();
    int bad = 0;
    for (std::size_t i = 0; i < kSpecs.size(); ++i) {
      const Tensor x = member(sharded.model.weights(), sharded, i), y = member(single.model.weights(), single, i);
      const std::int64_t at = local_part(sharded, i).global_begin;
      for (std::int64_t l = 0; l < x.numel(); ++l) bad += !close(x.data<float>()[l], y.data<float>()[at + l], 1e-6);
    }
    CHECK(bad == 0);
    sharded.model.release_all();
    single.model.release_all();
  }
}

TEST_CASE("a unit smaller than the group: ranks with only padding own no slices") {
  Comm& c = *world();
  const Spec tiny{"tiny", {1}, true, false, false, [](ModelWeights& w) -> Tensor& { return w.norm; }, {1}, 0};
  Sharded s(c, 1, {UnitSpec{"root", ParamSchedule::kRootUnit, UnitGroup::World, true, {{param_spec(tiny), true, false}}}});
  FsdpUnit& u = *s.model.units()[0];
  CHECK(u.numel() == 1);
  CHECK(u.chunk() == 1);
  CHECK(u.padded_numel() == c.size());
  const auto owned = u.owned();
  REQUIRE(owned.size() == (c.rank() == 0 ? 1u : 0u));
  if (c.rank() == 0) {
    CHECK(owned[0].name == "tiny");
    CHECK(owned[0].begin == 0);
    CHECK(owned[0].end == 1);
  }
  u.load([](const std::string& name, const Shape& shape, std::int64_t begin, std::int64_t end, float* dst) {
    CHECK(name == "tiny");
    CHECK(begin == 0);
    CHECK(end == 1);
    dst[0] = 2.f;
  });
  // Rank 0 contributes 0.5, the others 0 (the bind / reduce-scatter of the unit itself).
  ModelGrads g;
  u.bind_grads(g);
  REQUIRE(g.norm.numel() == 1);
  CHECK(g.norm.data<float>()[0] == 0.f);
  g.norm.data<float>()[0] = c.rank() == 0 ? 0.5f : 0.f;
  FsdpTraffic traffic;
  u.reduce_grads(g, traffic);
  CHECK(g.norm.raw() == nullptr);
  CHECK(traffic.reduce_scatters == 1);
  CHECK(u.local_grad_sq() == (c.rank() == 0 ? 0.25 : 0.0));
  AdamWOptions o;
  o.weight_decay = 0;
  const StepStats st = optimizer_step(s, o, 0.1, 1);
  CHECK(st.grad_norm == doctest::Approx(0.5));
  u.gather_start(traffic);
  u.gather_finish(s.model.weights());
  REQUIRE(s.model.weights().norm.numel() == 1);
  CHECK(s.model.weights().norm.data<float>()[0] == doctest::Approx(2.0 - 0.1).epsilon(1e-6));  // moves by lr·sign(g)
  u.release(s.model.weights());
  CHECK(s.model.weights().norm.raw() == nullptr);
}

TEST_CASE("gradients accumulate over micro-batches in the owned slices until zero_grad") {
  Comm& c = *world();
  for (int ep : ep_sizes(c.size())) {
    CAPTURE(ep);
    Sharded s(c, ep);
    const int r = c.rank();
    // Small integers: every sum is exact whatever the reduction order.
    auto value = [&](int mb, std::size_t i, std::int64_t j) { return static_cast<float>((r + 1) * (mb + 1) + j % 5); };
    s.model.zero_grad();
    for (int mb = 0; mb < 2; ++mb) backward(s, [&](std::size_t i, std::int64_t j) { return value(mb, i, j); });
    CHECK(s.model.traffic().reduce_scatters == 4);  // 2 units x 2 micro-batches
    const Feed f{c.size(), ep, false, 0, 1.f};
    auto state = gather_state(c, s.model);
    int bad = 0;
    for (std::size_t i = 0; i < kSpecs.size(); ++i)
      for (std::int64_t j = 0; j < numel_of(i); ++j) {
        float want = 0;  // frozen tensors: their gradient is dropped at the reduce
        for (int q = 0; q < c.size() && kSpecs[i].trainable; ++q)
          if (holds(f, q, i, j))
            for (int mb = 0; mb < 2; ++mb) want += static_cast<float>((q + 1) * (mb + 1) + j % 5);
        bad += state.at(kSpecs[i].name).grad[static_cast<std::size_t>(j)] != want;
      }
    CHECK(bad == 0);
    s.model.zero_grad();
    state = gather_state(c, s.model);
    for (const auto& [name, d] : state)
      for (float x : d.grad) CHECK(x == 0.f);
  }
}

TEST_CASE("optimizer state saved as named flat slices on N ranks resumes identically on M ranks") {
  Comm& c = *world();
  const AdamWOptions o;
  auto lr = [](int k) { return 1e-3 + 1e-4 * k; };
  auto feed = [](Sharded& s, int k) {  // one source: the same total gradient on every mesh
    backward(s, Feed{s.world().size(), s.mesh.ep, true, k, kScales[k]});
  };
  const int ep_a = ep_sizes(c.size()).back();
  Sharded a(c, ep_a);
  a.model.load(init_loader(1.f));
  const int K = 3, J = 3;
  for (int k = 0; k < K; ++k) {
    a.model.zero_grad();
    feed(a, k);
    optimizer_step(a, o, lr(k), k + 1);
  }

  // "Checkpoint": every named tensor's master / exp_avg / exp_avg_sq assembled from the ranks' owned
  // slices, as flat ranges of the global tensors (jobs/sft.cpp save_checkpoint writes these ranges).
  const auto store = gather_state(c, a.model);
  for (const auto& [name, d] : store)
    for (float x : d.covered) CHECK(x == 1.f);  // exact tiling
  const std::int64_t saved_step = K;

  for (int k = K; k < K + J; ++k) {  // the uninterrupted run
    a.model.zero_grad();
    feed(a, k);
    optimizer_step(a, o, lr(k), k + 1);
  }
  const auto final_a = gather_state(c, a.model);

  for (int M : {1, 2, 4}) {
    if (M > c.size() || c.size() % M != 0) continue;
    auto group = c.split(c.rank() / M, c.rank());
    REQUIRE(group->size() == M);
    for (int ep_b : ep_sizes(M)) {
      CAPTURE(M);
      CAPTURE(ep_b);
      Sharded b(*group, ep_b);  // all-zero state: the load must overwrite it
      // Masters through a SliceLoader reading the saved full tensors, the moments through the owned
      // views (as jobs/sft.cpp load_checkpoint does).
      b.model.load([&](const std::string& name, const Shape& shape, std::int64_t begin, std::int64_t end, float* dst) {
        CHECK(shape == kSpecs[index_of(name)].shape);
        const Full& d = store.at(name);
        for (std::int64_t j = begin; j < end; ++j) dst[j - begin] = d.master[static_cast<std::size_t>(j)];
      });
      for (const auto& u : b.model.units())
        for (OwnedSlice& os : u->owned()) {
          if (!os.trainable) continue;
          const Full& d = store.at(os.name);
          for (std::int64_t j = os.begin; j < os.end; ++j) {
            os.exp_avg.data<float>()[j - os.begin] = d.exp_avg[static_cast<std::size_t>(j)];
            os.exp_avg_sq.data<float>()[j - os.begin] = d.exp_avg_sq[static_cast<std::size_t>(j)];
          }
        }
      // The compute copy is the saved weights.
      b.model.gather_all();
      int bad = 0;
      for (std::size_t i = 0; i < kSpecs.size(); ++i) {
        const Tensor w = member(b.model.weights(), b, i);
        const std::int64_t at = local_part(b, i).global_begin;
        for (std::int64_t l = 0; l < w.numel(); ++l)
          bad += w.data<float>()[l] != store.at(kSpecs[i].name).master[static_cast<std::size_t>(at + l)];
      }
      CHECK(bad == 0);
      b.model.release_all();

      for (int k = K; k < K + J; ++k) {
        b.model.zero_grad();
        feed(b, k);
        optimizer_step(b, o, lr(k), saved_step + (k - K) + 1);
      }
      const auto final_b = gather_state(*group, b.model);
      bad = 0;
      for (std::size_t i = 0; i < kSpecs.size(); ++i) {
        const Full &x = final_a.at(kSpecs[i].name), &y = final_b.at(kSpecs[i].name);
        bad += x.master != y.master;
        bad += x.exp_avg != y.exp_avg;
        bad += x.exp_avg_sq != y.exp_avg_sq;
      }
      CHECK(bad == 0);
    }
  }
}

TEST_CASE("SFT trainability: the router and the layer scalars are frozen") {
  CHECK(sft_trainable("model.embed_tokens.weight"));
  CHECK(sft_trainable("model.norm.weight"));
  CHECK(sft_trainable("model.self_conditioning.pre_norm.weight"));
  CHECK(sft_trainable("model.layers.3.self_attn.q_norm.weight"));
  CHECK(sft_trainable("model.layers.3.mlp.gate_proj.weight"));
  CHECK(sft_trainable("model.layers.3.moe.experts.gate_and_up_projs"));
  CHECK(sft_trainable("model.layers.3.moe.experts.down_projs"));
  CHECK_FALSE(sft_trainable("model.layers.3.moe.gate.proj.weight"));
  CHECK_FALSE(sft_trainable("model.layers.3.moe.gate.scale"));
  CHECK_FALSE(sft_trainable("model.layers.3.moe.gate.per_expert_scale"));
  CHECK_FALSE(sft_trainable("model.layers.3.layer_scalar"));
  CHECK_FALSE(sft_trainable("model.layers.3.encoder_layer_scalar"));
}

TEST_CASE("AdamW options are validated with the option's name") {
  auto with = [](auto set) {
    AdamWOptions o;
    set(o);
    return config_error([&] { validate(o); });
  };
  CHECK(config_error([] { validate(AdamWOptions{}); }) == "(no ConfigError)");
  CHECK(with([](AdamWOptions& o) { o.beta1 = 1.0; }).find("beta1") != std::string::npos);
  CHECK(with([](AdamWOptions& o) { o.beta2 = -0.1; }).find("beta2") != std::string::npos);
  CHECK(with([](AdamWOptions& o) { o.eps = -1; }).find("eps") != std::string::npos);
  CHECK(with([](AdamWOptions& o) { o.weight_decay = NAN; }).find("weight_decay") != std::string::npos);
  CHECK(with([](AdamWOptions& o) { o.max_grad_norm = 0; }).find("max_grad_norm") != std::string::npos);
}

TEST_CASE("LR schedule: 25-step linear warmup from 0, cosine to 1.5e-5 at step 800 (the recipe)") {
  const LrSchedule s;  // defaults = spec/training.md §6.2
  validate(s);
  CHECK(learning_rate(s, 0) == 0.0);                            // the first update runs with lr 0
  CHECK(learning_rate(s, 1) == doctest::Approx(6e-6).epsilon(1e-12));     // 1/25 · 1.5e-4
  CHECK(learning_rate(s, 10) == doctest::Approx(6e-5).epsilon(1e-12));
  CHECK(learning_rate(s, 25) == doctest::Approx(1.5e-4).epsilon(1e-12));  // peak at the end of warmup
  CHECK(learning_rate(s, 26) == doctest::Approx(1.5e-5 + 0.5 * (1 + std::cos(std::numbers::pi / 775)) * 1.35e-4)
                                    .epsilon(1e-12));
  CHECK(learning_rate(s, 800) == doctest::Approx(1.5e-5).epsilon(1e-12));  // end: min_lr
  CHECK(learning_rate(s, 801) == 1.5e-5);
  CHECK(learning_rate(s, 5000) == 1.5e-5);
  for (std::int64_t n = 26; n <= 800; ++n) CHECK(learning_rate(s, n) < learning_rate(s, n - 1));

  LrSchedule h;  // round numbers: the decay midpoint is exactly between max and min
  h.init_lr = 1e-5, h.max_lr = 1e-3, h.min_lr = 1e-4, h.warmup_steps = 10, h.decay_steps = 110;
  CHECK(learning_rate(h, 0) == doctest::Approx(1e-5).epsilon(1e-12));
  CHECK(learning_rate(h, 5) == doctest::Approx(5.05e-4).epsilon(1e-12));
  CHECK(learning_rate(h, 10) == doctest::Approx(1e-3).epsilon(1e-12));
  CHECK(learning_rate(h, 60) == doctest::Approx(5.5e-4).epsilon(1e-12));       // midpoint: cos(π/2) = 0
  CHECK(learning_rate(h, 35) == doctest::Approx(1e-4 + 0.5 * (1 + std::sqrt(0.5)) * 9e-4).epsilon(1e-12));
  CHECK(learning_rate(h, 110) == doctest::Approx(1e-4).epsilon(1e-12));
  h.decay_style = "linear";
  CHECK(learning_rate(h, 60) == doctest::Approx(5.5e-4).epsilon(1e-12));
  CHECK(learning_rate(h, 35) == doctest::Approx(1e-4 + 0.75 * 9e-4).epsilon(1e-12));
  h.decay_style = "constant";
  CHECK(learning_rate(h, 5) == doctest::Approx(5.05e-4).epsilon(1e-12));       // warmup still applies
  CHECK(learning_rate(h, 500) == 1e-3);
  h.decay_style = "cosine", h.warmup_steps = 0;
  CHECK(learning_rate(h, 0) == 1e-3);                                          // no warmup: starts at the peak
}

TEST_CASE("LR schedule options are validated with the option's name") {
  auto with = [](auto set) {
    LrSchedule s;
    set(s);
    return config_error([&] { validate(s); });
  };
  CHECK(with([](LrSchedule& s) { s.max_lr = 0; }).find("max_lr") != std::string::npos);
  CHECK(with([](LrSchedule& s) { s.min_lr = 1; }).find("min_lr") != std::string::npos);
  CHECK(with([](LrSchedule& s) { s.init_lr = -1; }).find("init_lr") != std::string::npos);
  CHECK(with([](LrSchedule& s) { s.decay_steps = 0; }).find("decay_steps") != std::string::npos);
  CHECK(with([](LrSchedule& s) { s.warmup_steps = 800; }).find("warmup_steps") != std::string::npos);
  CHECK(with([](LrSchedule& s) { s.decay_style = "exp"; }).find("decay_style") != std::string::npos);
}
