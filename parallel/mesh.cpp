// The device mesh: ep groups, expert-replica groups, checks (see mesh.h).
#include "parallel/mesh.h"

#include <algorithm>
#include <map>

#include "layers/error.h"

namespace dg {

std::string Mesh::describe() const {
  return fmt::format("world {} = fsdp {} (dense units), ep {} x expert replicas {} ({} of {} experts per rank)",
                     world_size(), world_size(), ep, world_size() / ep, local_experts(), num_experts);
}

nlohmann::json Mesh::to_json() const {
  return {{"world", world_size()}, {"ep", ep}, {"expert_replicas", world_size() / ep}, {"num_experts", num_experts}};
}

Mesh make_mesh(Comm& world, int ep, std::int64_t num_experts, int node_id) {
  const int n = world.size();
  if (ep < 1) fail_config("--ep {} must be at least 1", ep);
  if (n % ep != 0) fail_config("--ep {} does not divide the world size {} (ranks)", ep, n);
  if (num_experts % ep != 0) fail_config("--ep {} does not divide the model's {} experts", ep, num_experts);
  // Node placement: every rank learns every rank's node.
  std::vector<std::int32_t> nodes(static_cast<std::size_t>(n));
  const std::int32_t mine = node_id;
  world.all_gather(&mine, nodes.data(), 1, DType::I32);
  std::map<std::int32_t, int> per_node;
  for (std::int32_t id : nodes) ++per_node[id];
  int smallest = n;
  for (const auto& [id, count] : per_node) smallest = std::min(smallest, count);
  for (int g = 0; g < n / ep; ++g) {
    const auto first = nodes.begin() + g * ep;
    const bool spans = std::any_of(first, first + ep, [&](std::int32_t id) { return id != *first; });
    if (spans && ep <= smallest)
      fail_config("--ep {}: the expert-parallel group of world ranks {}..{} spans nodes although every node holds {} "
                  "ranks or more; place ranks by node (mpirun --map-by node is wrong here: use the default block "
                  "placement, or srun's --distribution=block)",
                  ep, g * ep, g * ep + ep - 1, smallest);
  }
  Mesh m;
  m.world = &world;
  m.ep = ep;
  m.num_experts = num_experts;
  m.ep_group = world.split(world.rank() / ep, world.rank());
  m.replica = world.split(world.rank() % ep, world.rank());
  return m;
}

}  // namespace dg
