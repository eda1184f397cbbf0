// The DiffusionGemma parallel plan (see plan.h).
#include "parallel/plan.h"

#include <fmt/format.h>

namespace dg {

namespace {

bool is_expert_tensor(const std::string& name) { return name.find(".moe.experts.") != std::string::npos; }

// The layer a native name belongs to, or -1 (root).
int layer_of(const std::string& name) {
  static const std::string prefix = "model.layers.";
  if (name.rfind(prefix, 0) != 0) return -1;
  return std::stoi(name.substr(prefix.size()));
}

}  // namespace

std::vector<UnitSpec> diffusion_gemma_plan(const ModelConfig& c, const ParallelPlanOptions& o,
                                           bool (*trainable)(const std::string& name)) {
  std::vector<UnitSpec> plan;
  plan.push_back({"root", ParamSchedule::kRootUnit, UnitGroup::World, true, {}});
  for (int i = 0; i < c.num_layers; ++i) {
    plan.push_back({fmt::format("layers.{}", i), i, UnitGroup::World, o.reshard_after_forward, {}});
    plan.push_back({fmt::format("layers.{}.experts", i), i, UnitGroup::ExpertReplica, o.reshard_after_forward, {}});
  }
  for (const ParamSpec& p : model_params(c)) {
    const int layer = layer_of(p.name);
    const bool expert = is_expert_tensor(p.name);
    UnitSpec& u = layer < 0 ? plan[0] : plan[static_cast<std::size_t>(1 + 2 * layer + (expert ? 1 : 0))];
    u.tensors.push_back({p, trainable(p.name), expert});
  }
  return plan;
}

}  // namespace dg
