// The device mesh of a training job (DESIGN.md "Parallelism"): the world communicator is the FSDP group
// of the dense units; the experts are split over `ep` ranks and each expert slice is sharded over the
// ranks that hold the same experts.
//
//   world ranks   0 1 2 3 | 4 5 6 7          world = 8, ep = 4
//   ep group      [0 1 2 3] [4 5 6 7]        consecutive ranks split the E experts, E/ep each, contiguous
//   replica group {0,4} {1,5} {2,6} {3,7}    same experts; their expert units are sharded over these
//
// An ep group is consecutive world ranks so that it stays inside a node when ranks are placed by node
// (mpirun/srun's default block placement).
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "parallel/comm.h"

namespace dg {

struct Mesh {
  Comm* world = nullptr;           // FSDP group of the dense units (not owned)
  int ep = 1;                      // expert-parallel size
  std::unique_ptr<Comm> ep_group;  // the ep ranks that split the experts (rank in it = ep rank)
  std::unique_ptr<Comm> replica;   // the world/ep ranks holding the same experts
  std::int64_t num_experts = 0;

  int world_size() const { return world->size(); }
  int ep_rank() const { return ep_group->rank(); }
  std::int64_t local_experts() const { return num_experts / ep; }
  std::int64_t first_expert() const { return ep_rank() * local_experts(); }
  std::string describe() const;    // "world 8 = fsdp 8, ep 4 x expert replicas 2 (32 experts per rank)"
  nlohmann::json to_json() const;  // {"world": 8, "ep": 4, "expert_replicas": 2, "num_experts": 128}
};

// Builds the mesh (collective over `world`). node_id: an id shared by the ranks of one node (Runtime's
// node_id). ConfigError naming the numbers when ep < 1, ep does not divide the world size or the number
// of experts, or an ep group would span nodes although every node holds at least ep ranks.
Mesh make_mesh(Comm& world, int ep, std::int64_t num_experts, int node_id);

}  // namespace dg
