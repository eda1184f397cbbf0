// Expert parallelism: the token exchange of a MoE layer over the ep group (DESIGN.md "Parallelism").
//
//   route      every rank counts its routed rows per expert (moe_permute_plan), the counts of each
//              owner's experts go to that owner (one all-to-all of E/ep integers per peer)
//   to_owners  all-to-all-v of the rows, sorted by global expert on the sender, so each owner gets
//              [source 0: rows for its experts][source 1: ...]; reordered to [expert 0: source 0, 1,
//              ...][expert 1: ...] for one grouped GEMM over the local experts (dropless: every row
//              is sent, there is no capacity factor)
//   to_sources the reverse, so every row returns to its sender at its original place; the sender
//              combines with its routing weights in fp32 in token order (the weights never travel,
//              and the routing-weight gradient is formed where the router ran)
//
// The order of the received rows is fixed by (expert, source rank, sender's order): nothing depends on
// message arrival order. The backward uses the same route: d(expert output) goes to_owners, d(expert
// input) to_sources; expert weight gradients accumulate on their owner.
#pragma once
#include "layers/sharding.h"
#include "parallel/mesh.h"

namespace dg {

// Bytes this rank sent and received through the exchanges (bench).
struct ExpertTraffic {
  double sent_bytes = 0, received_bytes = 0;
  std::int64_t exchanges = 0;
};

class MeshExpertExchange final : public ExpertExchange {
 public:
  explicit MeshExpertExchange(Mesh& mesh) : mesh_(mesh) {}
  std::int64_t first_expert() const override { return mesh_.first_expert(); }
  std::int64_t local_experts() const override { return mesh_.local_experts(); }
  ExpertRoute route(const Tensor& counts) override;
  void to_owners(const ExpertRoute& r, const Tensor& rows, Tensor& out) override;
  void to_sources(const ExpertRoute& r, const Tensor& rows, Tensor& out) override;
  const ExpertTraffic& traffic() const { return traffic_; }

 private:
  void exchange(const Tensor& send, const std::vector<std::int64_t>& send_rows, Tensor& recv,
                const std::vector<std::int64_t>& recv_rows);
  Mesh& mesh_;
  ExpertTraffic traffic_;
};

}  // namespace dg
