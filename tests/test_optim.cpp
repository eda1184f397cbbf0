// optim/: AdamW on sharded fp32 masters against a scalar transcription of torch.optim.AdamW +
// clip_grad_norm_, frozen tensors, sharded (2 / 4 ranks) vs 1-rank updates, optimizer-state round trips
// across rank counts through the state-slice API, and the warmup + cosine LR schedule. Runs under
// mpiexec with 1, 2 and 4 ranks.
#include <doctest/doctest.h>

#include <cmath>
#include <functional>
#include <map>
#include <numbers>

#include "optim/adamw.h"
#include "optim/schedule.h"

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

// A small "model": tensors of awkward sizes (79 trainable elements: padding on 2 and 4 ranks), one
// without weight decay, one frozen.
struct Spec {
  const char* name;
  Shape shape;
  bool trainable, weight_decay;
};
const std::vector<Spec> kSpecs = {{"a.weight", {5, 7}, true, true},
                                  {"b.norm", {13}, true, false},
                                  {"router", {3, 4}, false, true},
                                  {"c.scalar", {1}, true, true},
                                  {"d.experts", {2, 3, 5}, true, true}};

struct Model {
  std::vector<Tensor> params, grads;
  explicit Model(float init_scale = 1.f) {
    for (std::size_t i = 0; i < kSpecs.size(); ++i) {
      Tensor p = Tensor::empty(kSpecs[i].shape, DType::F32);
      for (std::int64_t j = 0; j < p.numel(); ++j) p.data<float>()[j] = init_scale * hashf(7, i, static_cast<std::uint64_t>(j));
      params.push_back(p);
      grads.push_back(Tensor::zeros(kSpecs[i].shape, DType::F32));
    }
  }
  std::vector<ParamEntry> entries() const {
    std::vector<ParamEntry> out;
    for (std::size_t i = 0; i < kSpecs.size(); ++i)
      out.push_back({kSpecs[i].name, params[i], grads[i], kSpecs[i].trainable, kSpecs[i].weight_decay});
    return out;
  }
};

// Rank r's gradient contribution at step k (the frozen tensor gets a huge one: it must be ignored).
float grad_value(int k, int r, std::size_t tensor, std::int64_t j, float scale) {
  const float g = scale * hashf(1000 + static_cast<std::uint64_t>(k), static_cast<std::uint64_t>(r) * 64 + tensor,
                                static_cast<std::uint64_t>(j));
  return kSpecs[tensor].trainable ? g : 1e3f;
}
const float kScales[] = {0.02f, 0.5f, 3.0f, 0.01f, 8.0f, 0.2f};  // with max_norm 1: some steps clip

// The total gradient of step k over `ranks` contributions, added in rank order.
std::vector<std::vector<float>> total_grad(int k, int ranks, float scale) {
  std::vector<std::vector<float>> g;
  for (std::size_t i = 0; i < kSpecs.size(); ++i) {
    std::vector<float> t(static_cast<std::size_t>(shape_numel(kSpecs[i].shape)), 0.f);
    for (int r = 0; r < ranks; ++r)
      for (std::size_t j = 0; j < t.size(); ++j) t[j] += grad_value(k, r, i, static_cast<std::int64_t>(j), scale);
    g.push_back(std::move(t));
  }
  return g;
}
void set_grads(Model& m, const std::vector<std::vector<float>>& g) {
  for (std::size_t i = 0; i < kSpecs.size(); ++i)
    for (std::size_t j = 0; j < g[i].size(); ++j) m.grads[i].data<float>()[j] = g[i][j];
}
void zero_grads(Model& m) {
  for (Tensor& g : m.grads) g.zero_();
}

// torch.optim.AdamW (single-tensor path) + torch.nn.utils.clip_grad_norm_, one scalar at a time, on the
// full (unsharded) tensors.
struct Reference {
  std::vector<std::vector<float>> p, m, v;
  std::int64_t t = 0;
  explicit Reference(const Model& model) {
    for (std::size_t i = 0; i < kSpecs.size(); ++i) {
      const float* d = model.params[i].data<float>();
      p.emplace_back(d, d + model.params[i].numel());
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

bool close(double a, double b, double rel) { return std::abs(a - b) <= rel * std::max(std::abs(a), std::abs(b)) + 1e-30; }

std::size_t index_of(const std::string& name) {
  for (std::size_t i = 0; i < kSpecs.size(); ++i)
    if (name == kSpecs[i].name) return i;
  FAIL("unknown tensor " << name);
  return 0;
}

// Every rank's params (all hold the full tensors) and owned state against the reference.
void check_against(const Model& model, const FlatParams& unit, const Reference& ref, double rel) {
  int bad = 0;
  for (std::size_t i = 0; i < kSpecs.size(); ++i)
    for (std::size_t j = 0; j < ref.p[i].size(); ++j)
      if (!close(model.params[i].data<float>()[j], ref.p[i][j], rel) && bad++ < 5)
        FAIL_CHECK(kSpecs[i].name << "[" << j << "] = " << model.params[i].data<float>()[j] << ", reference "
                                  << ref.p[i][j]);
  CHECK(bad == 0);
  for (const StateSlice& s : unit.state_slices()) {
    const std::size_t i = index_of(s.name);
    for (std::int64_t j = s.begin; j < s.end; ++j) {
      const auto k = static_cast<std::size_t>(j);
      const std::int64_t l = j - s.begin;
      CHECK(close(s.master.data<float>()[l], ref.p[i][k], rel));
      CHECK(close(s.exp_avg.data<float>()[l], ref.m[i][k], rel));
      CHECK(close(s.exp_avg_sq.data<float>()[l], ref.v[i][k], rel));
    }
  }
  CHECK(unit.step() == ref.t);
}

std::string config_error(const std::function<void()>& f) {
  try {
    f();
  } catch (const ConfigError& e) {
    return e.what();
  }
  return "(no ConfigError)";
}

}  // namespace

TEST_CASE("AdamW + clipping match torch's algorithm over several steps; frozen tensors untouched") {
  Comm& c = *world();
  Model model;
  Reference ref(model);
  const Tensor frozen_before = model.params[2].clone();
  FlatParams unit(model.entries(), c);
  CHECK(unit.numel() == 79);
  CHECK(unit.padded_numel() % c.size() == 0);
  CHECK(unit.layout().size() == 4);  // the frozen router is not in the layout

  AdamWOptions o;  // the reference recipe: (0.95, 0.99), eps 1e-8, wd 1e-4, max norm 1
  o.weight_decay = 0.05;  // large enough to matter in a few steps
  FlatParams* units[] = {&unit};
  int clipped = 0;
  for (int k = 0; k < 6; ++k) {
    const double lr = 1e-3 * (k + 1);
    auto g = total_grad(k, 1, kScales[k]);
    // Rank 0 contributes the whole gradient, the others zeros: the reduced sum is exact.
    if (c.rank() == 0) set_grads(model, g); else zero_grads(model);
    const Tensor frozen_grad = model.grads[2].clone();
    const StepStats s = optimizer_step(c, units, o, lr);
    const StepStats r = ref.step(g, o, lr);
    CHECK(close(s.grad_norm, r.grad_norm, 1e-12));
    CHECK(close(s.clip_coef, r.clip_coef, 1e-12));
    clipped += s.clip_coef < 1;
    check_against(model, unit, ref, 1e-6);
    for (std::int64_t j = 0; j < 12; ++j) {
      CHECK(model.params[2].data<float>()[j] == frozen_before.data<float>()[j]);
      CHECK(model.grads[2].data<float>()[j] == frozen_grad.data<float>()[j]);
    }
  }
  CHECK(clipped >= 2);
  CHECK(clipped <= 4);
}

TEST_CASE("first AdamW step in closed form: bias corrections cancel, decoupled weight decay") {
  Comm& c = *world();
  Model model;
  Model initial;
  FlatParams unit(model.entries(), c);
  AdamWOptions o;
  o.weight_decay = 0.1;
  o.max_grad_norm = 1e9;  // no clipping
  const double lr = 1e-3;
  auto g = total_grad(0, 1, 0.7f);
  if (c.rank() == 0) set_grads(model, g); else zero_grads(model);
  FlatParams* units[] = {&unit};
  const StepStats s = optimizer_step(c, units, o, lr);
  CHECK(s.clip_coef == 1.0);
  // m̂ = g and v̂ = g² after one step, so p1 = p0 (1 - lr wd) - lr g / (|g| + eps).
  for (std::size_t i = 0; i < kSpecs.size(); ++i) {
    if (!kSpecs[i].trainable) continue;
    for (std::size_t j = 0; j < g[i].size(); ++j) {
      const double p0 = initial.params[i].data<float>()[j], gj = g[i][j];
      const double decay = kSpecs[i].weight_decay ? 1 - lr * o.weight_decay : 1.0;
      const double expect = p0 * decay - lr * gj / (std::abs(gj) + o.eps);
      CHECK(std::abs(model.params[i].data<float>()[j] - expect) <= 1e-6 * std::abs(expect) + 1e-9);
    }
  }
}

TEST_CASE("the sharded update on every rank count equals the 1-rank update") {
  Comm& c = *world();
  Model sharded, single;
  FlatParams unit(sharded.entries(), c);
  auto self = c.split(c.rank(), 0);  // each rank alone: the 1-rank run
  REQUIRE(self->size() == 1);
  FlatParams unit1(single.entries(), *self);
  FlatParams* units[] = {&unit};
  FlatParams* units1[] = {&unit1};
  const AdamWOptions o;  // the recipe as is
  for (int k = 0; k < 6; ++k) {
    const double lr = 2e-3;
    // Each rank contributes its own gradient; the 1-rank run gets their sum.
    for (std::size_t i = 0; i < kSpecs.size(); ++i)
      for (std::int64_t j = 0; j < sharded.grads[i].numel(); ++j)
        sharded.grads[i].data<float>()[j] = grad_value(k, c.rank(), i, j, kScales[k]);
    set_grads(single, total_grad(k, c.size(), kScales[k]));
    const StepStats a = optimizer_step(c, units, o, lr);
    const StepStats b = optimizer_step(*self, units1, o, lr);
    CHECK(close(a.grad_norm, b.grad_norm, 1e-6));
    CHECK(close(a.clip_coef, b.clip_coef, 1e-6));
  }
  int bad = 0;
  for (std::size_t i = 0; i < kSpecs.size(); ++i)
    for (std::int64_t j = 0; j < sharded.params[i].numel(); ++j)
      bad += !close(sharded.params[i].data<float>()[j], single.params[i].data<float>()[j], 1e-6);
  CHECK(bad == 0);
}

TEST_CASE("optimizer state saved as named flat slices on N ranks resumes identically on M ranks") {
  Comm& c = *world();
  const AdamWOptions o;
  auto lr = [](int k) { return 1e-3 + 1e-4 * k; };
  Model a;
  FlatParams ua(a.entries(), c);
  FlatParams* units_a[] = {&ua};
  auto feed = [](Model& m, Comm& group, int k) {  // the group's rank 0 contributes the whole gradient
    if (group.rank() == 0) set_grads(m, total_grad(k, 1, kScales[k])); else zero_grads(m);
  };
  const int K = 3, J = 3;
  for (int k = 0; k < K; ++k) {
    feed(a, c, k);
    optimizer_step(c, units_a, o, lr(k));
  }

  // "Checkpoint": every named tensor's master / exp_avg / exp_avg_sq assembled from the ranks' slices
  // (each element written by its one owner, zeros elsewhere, summed), plus a coverage count.
  struct Saved {
    Tensor master, exp_avg, exp_avg_sq, covered;
  };
  std::map<std::string, Saved> store;
  for (const FlatEntry& e : ua.layout())
    store[e.name] = {Tensor::zeros({e.numel}, DType::F32), Tensor::zeros({e.numel}, DType::F32),
                     Tensor::zeros({e.numel}, DType::F32), Tensor::zeros({e.numel}, DType::F32)};
  for (const StateSlice& s : ua.state_slices()) {
    Saved& d = store.at(s.name);
    CHECK(s.shape == kSpecs[index_of(s.name)].shape);
    for (std::int64_t j = s.begin; j < s.end; ++j) {
      d.master.data<float>()[j] = s.master.data<float>()[j - s.begin];
      d.exp_avg.data<float>()[j] = s.exp_avg.data<float>()[j - s.begin];
      d.exp_avg_sq.data<float>()[j] = s.exp_avg_sq.data<float>()[j - s.begin];
      d.covered.data<float>()[j] += 1;
    }
  }
  for (auto& [name, d] : store) {
    for (Tensor* t : {&d.master, &d.exp_avg, &d.exp_avg_sq, &d.covered}) all_reduce(c, *t);
    for (std::int64_t j = 0; j < d.covered.numel(); ++j) CHECK(d.covered.data<float>()[j] == 1.f);  // exact tiling
  }
  const std::int64_t saved_step = ua.step();
  CHECK(saved_step == K);

  for (int k = K; k < K + J; ++k) {  // the uninterrupted run
    feed(a, c, k);
    optimizer_step(c, units_a, o, lr(k));
  }

  for (int M : {1, 2, 4}) {
    if (M > c.size() || c.size() % M != 0) continue;
    CAPTURE(M);
    auto group = c.split(c.rank() / M, c.rank());
    REQUIRE(group->size() == M);
    Model b(0.f);  // all-zero params: the load must overwrite them
    FlatParams ub(b.entries(), *group);
    for (const StateSlice& s : ub.state_slices()) {
      const Saved& d = store.at(s.name);
      for (std::int64_t j = s.begin; j < s.end; ++j) {
        s.master.data<float>()[j - s.begin] = d.master.data<float>()[j];
        s.exp_avg.data<float>()[j - s.begin] = d.exp_avg.data<float>()[j];
        s.exp_avg_sq.data<float>()[j - s.begin] = d.exp_avg_sq.data<float>()[j];
      }
    }
    ub.set_step(saved_step);
    ub.publish();
    for (const FlatEntry& e : ub.layout()) {
      const Tensor& p = b.params[index_of(e.name)];
      for (std::int64_t j = 0; j < e.numel; ++j) CHECK(p.data<float>()[j] == store.at(e.name).master.data<float>()[j]);
    }
    FlatParams* units_b[] = {&ub};
    for (int k = K; k < K + J; ++k) {
      feed(b, *group, k);
      optimizer_step(*group, units_b, o, lr(k));
    }
    int bad = 0;
    for (std::size_t i = 0; i < kSpecs.size(); ++i) {
      if (!kSpecs[i].trainable) continue;
      for (std::int64_t j = 0; j < a.params[i].numel(); ++j)
        bad += a.params[i].data<float>()[j] != b.params[i].data<float>()[j];
    }
    CHECK(bad == 0);
    CHECK(ub.step() == K + J);
  }
}

TEST_CASE("a unit smaller than the group: ranks with only padding own no slices") {
  Comm& c = *world();
  Tensor p = Tensor::from({1}, {2.f}), g = Tensor::from({1}, {0.5f});
  FlatParams u({{"tiny", p, g}}, c);
  CHECK(u.padded_numel() == c.size());
  CHECK(u.state_slices().size() == (c.rank() == 0 ? 1u : 0u));
  if (c.rank() != 0) g.data<float>()[0] = 0;
  FlatParams* units[] = {&u};
  AdamWOptions o;
  o.weight_decay = 0;
  const StepStats s = optimizer_step(c, units, o, 0.1);
  CHECK(s.grad_norm == doctest::Approx(0.5));
  CHECK(p.data<float>()[0] == doctest::Approx(2.0 - 0.1).epsilon(1e-6));  // first step moves by lr·sign(g)
}

TEST_CASE("grad_scale multiplies the reduced gradient") {
  Comm& c = *world();
  Tensor p = Tensor::zeros({6}, DType::F32), g = Tensor::zeros({6}, DType::F32);
  for (int j = 0; j < 6; ++j) g.data<float>()[j] = static_cast<float>(j + 1);
  FlatParams u({{"w", p, g}}, c, 0.25);
  u.reduce_grads();
  for (const StateSlice& s : u.state_slices())
    for (std::int64_t j = s.begin; j < s.end; ++j)
      CHECK(u.grad().data<float>()[j - u.shard_begin()] == 0.25f * static_cast<float>(c.size() * (j + 1)));
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
