// The expert-parallel token exchange (see expert_parallel.h).
#include "parallel/expert_parallel.h"

#include <algorithm>

#include "layers/error.h"

namespace dg {

namespace {

// Copies row blocks between the source-major layout [source p: expert e ...] and the expert-major one
// [expert e: source p ...] of the rows received from every source; to_expert_major picks the direction.
void reorder(const ExpertRoute& r, std::int64_t El, const Tensor& src, Tensor& dst, bool to_expert_major) {
  const auto peers = static_cast<std::int64_t>(r.recv_rows.size());
  const std::int64_t H = src.size(1);
  std::vector<std::int64_t> source_start(static_cast<std::size_t>(peers * El)),
      expert_start(static_cast<std::size_t>(peers * El));
  std::int64_t at = 0;
  for (std::int64_t p = 0; p < peers; ++p)
    for (std::int64_t e = 0; e < El; ++e) {
      source_start[static_cast<std::size_t>(p * El + e)] = at;
      at += r.recv_by_expert[static_cast<std::size_t>(p * El + e)];
    }
  at = 0;
  for (std::int64_t e = 0; e < El; ++e)
    for (std::int64_t p = 0; p < peers; ++p) {
      expert_start[static_cast<std::size_t>(p * El + e)] = at;
      at += r.recv_by_expert[static_cast<std::size_t>(p * El + e)];
    }
  (void)H;
  for (std::size_t i = 0; i < source_start.size(); ++i) {
    const std::int64_t from = to_expert_major ? source_start[i] : expert_start[i];
    const std::int64_t to = to_expert_major ? expert_start[i] : source_start[i];
    const std::int64_t n = r.recv_by_expert[i];
    if (n > 0) dst.rows(to, to + n).copy_from(src.rows(from, from + n));  // device-to-device on a GPU
  }
}

}  // namespace

ExpertRoute MeshExpertExchange::route(const Tensor& counts) {
  Comm& g = *mesh_.ep_group;
  const int peers = g.size();
  const std::int64_t El = local_experts();
  DG_CHECK(counts.dtype() == DType::I32 && counts.numel() == El * peers,
           "expert exchange: counts {} should be i32 [{}]", counts.describe(), El * peers);
  ExpertRoute r;
  std::vector<std::int64_t> sent(static_cast<std::size_t>(El * peers));
  const Tensor host_counts = read_to_host(counts, "moe_counts");  // the all-to-all sizes live on the host
  for (std::size_t i = 0; i < sent.size(); ++i) sent[i] = host_counts.data<std::int32_t>()[i];
  r.send_rows.assign(static_cast<std::size_t>(peers), 0);
  for (int p = 0; p < peers; ++p)
    for (std::int64_t e = 0; e < El; ++e) r.send_rows[static_cast<std::size_t>(p)] += sent[static_cast<std::size_t>(p * El + e)];
  r.recv_by_expert.assign(static_cast<std::size_t>(El * peers), 0);
  std::vector<std::size_t> n(static_cast<std::size_t>(peers), static_cast<std::size_t>(El)), displ(static_cast<std::size_t>(peers));
  for (int p = 0; p < peers; ++p) displ[static_cast<std::size_t>(p)] = static_cast<std::size_t>(p * El);
  g.all_to_all_v(sent.data(), n.data(), displ.data(), r.recv_by_expert.data(), n.data(), displ.data(), DType::I64);
  r.recv_rows.assign(static_cast<std::size_t>(peers), 0);
  Tensor local = Tensor::host_empty({El}, DType::I32);
  std::fill_n(local.data<std::int32_t>(), El, 0);
  for (int p = 0; p < peers; ++p)
    for (std::int64_t e = 0; e < El; ++e) {
      const std::int64_t k = r.recv_by_expert[static_cast<std::size_t>(p * El + e)];
      r.recv_rows[static_cast<std::size_t>(p)] += k;
      local.data<std::int32_t>()[e] += static_cast<std::int32_t>(k);
      r.received += k;
    }
  r.local_counts = local.clone();  // the grouped GEMM reads it where the rows live
  return r;
}

void MeshExpertExchange::exchange(const Tensor& send, const std::vector<std::int64_t>& send_rows, Tensor& recv,
                                  const std::vector<std::int64_t>& recv_rows) {
  const std::int64_t H = send.size(1);
  const std::size_t peers = send_rows.size();
  std::vector<std::size_t> sc(peers), sd(peers), rc(peers), rd(peers);
  std::size_t s_at = 0, r_at = 0;
  for (std::size_t p = 0; p < peers; ++p) {
    sc[p] = static_cast<std::size_t>(send_rows[p] * H);
    rc[p] = static_cast<std::size_t>(recv_rows[p] * H);
    sd[p] = s_at;
    rd[p] = r_at;
    s_at += sc[p];
    r_at += rc[p];
  }
  DG_CHECK(static_cast<std::int64_t>(s_at) == send.numel() && static_cast<std::int64_t>(r_at) == recv.numel(),
           "expert exchange: buffers {} -> {} do not match the route", send.describe(), recv.describe());
  mesh_.ep_group->all_to_all_v(send.raw(), sc.data(), sd.data(), recv.raw(), rc.data(), rd.data(), DType::F32);
  const auto me = static_cast<std::size_t>(mesh_.ep_group->rank());
  traffic_.sent_bytes += static_cast<double>(s_at - sc[me]) * 4.0;
  traffic_.received_bytes += static_cast<double>(r_at - rc[me]) * 4.0;
  ++traffic_.exchanges;
}

void MeshExpertExchange::to_owners(const ExpertRoute& r, const Tensor& rows, Tensor& out) {
  DG_CHECK(rows.dtype() == DType::F32 && rows.ndim() == 2 && out.ndim() == 2 && out.size(0) == r.received &&
               out.size(1) == rows.size(1),
           "expert exchange: to_owners {} -> {} with {} rows to receive", rows.describe(), out.describe(), r.received);
  Tensor by_source = Tensor::empty(out.shape(), DType::F32);
  exchange(rows, r.send_rows, by_source, r.recv_rows);
  reorder(r, local_experts(), by_source, out, true);
}

void MeshExpertExchange::to_sources(const ExpertRoute& r, const Tensor& rows, Tensor& out) {
  DG_CHECK(rows.dtype() == DType::F32 && rows.ndim() == 2 && rows.size(0) == r.received && out.ndim() == 2 &&
               out.size(1) == rows.size(1),
           "expert exchange: to_sources {} -> {} with {} rows received", rows.describe(), out.describe(), r.received);
  Tensor by_source = Tensor::empty(rows.shape(), DType::F32);
  reorder(r, local_experts(), rows, by_source, false);
  exchange(by_source, r.recv_rows, out, r.send_rows);
}

}  // namespace dg
