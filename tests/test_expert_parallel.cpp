// parallel/expert_parallel: the MoE token exchange alone (MeshExpertExchange over the ep group of a mesh),
// forward and backward, at ep = 1 (a one-rank group: the exchange is a local copy), 2 and 4 (the whole
// world, or sub-meshes of it: at 4 ranks and ep 2 there are two ep groups exchanging independently).
// Runs under mpiexec with 1, 2 and 4 ranks.
//
// Every rank makes T tokens; the token with global id g = world_rank·T + t gets its activations, routing
// (top-k distinct expert ids), routing weights and output gradient from a counter-based hash of g, so any
// rank can recompute any other rank's tokens. Every rank holds the full random expert weights and uses
// the rows of its E/ep experts. The chain (as layers/layer.cpp experts_forward/backward runs it):
//   moe_permute_plan, moe_gather, route, to_owners, grouped_gemm, geglu, grouped_gemm, to_sources,
//   moe_combine;  moe_combine_backward, to_owners(dy), grouped_gemm_backward, geglu_backward,
//   grouped_gemm_backward, to_sources(dx), moe_gather_backward
// is compared with the single-rank chain (no exchange, all experts) computed locally on the tokens of
// the rank's whole ep group, and, for the expert-weight gradients summed over the expert replicas, on
// the tokens of the whole world.
//
// Tolerances. The exchange delivers each owner its experts' rows ordered by (expert, source rank,
// sender's order), which is exactly the order the single-rank permutation gives the ep group's tokens
// (stable sort by expert of rank-major tokens). So every per-expert GEMM sees the same rows in the same
// order and the same shapes as in the reference, and the combine / gather sums run per token in slot
// order: outputs, input gradients, routing-weight gradients and the per-owner weight gradients are
// expected to be bitwise equal (checked: the exchanged rows themselves must be bitwise equal). They are
// compared within 1e-6 of the tensor's largest magnitude (fp32 rounding is ~6e-8 relative per
// operation; a misrouted row or a wrong order moves a value by O(0.1-1)), which only tolerates a BLAS
// kernel that rounds differently for a different memory alignment. The weight gradients summed over
// the replica group add W/ep partial sums where the world reference runs one GEMM over all rows of an
// expert (<= 96 rows here): the summation order changes, by at most ~n·2^-24 ≈ 6e-6 of Σ|terms| and in
// practice ~√n·6e-8; they are compared within 1e-5 of the tensor's largest magnitude.
#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include "layers/ops.h"
#include "parallel/expert_parallel.h"
#include "parallel/mesh.h"

using namespace dg;

namespace {

std::unique_ptr<Comm>& world() {
  static std::unique_ptr<Comm> w = mpi_world();
  return w;
}

constexpr std::int64_t kE = 8, kTopK = 2, kH = 8, kFm = 6, kT = 12;  // T tokens per rank

std::uint64_t mix(std::uint64_t a, std::uint64_t b, std::uint64_t c) {  // splitmix64 of three counters
  std::uint64_t x = a * 0x9E3779B97F4A7C15ull ^ (b + 0x632BE59BD9B4E019ull) * 0xBF58476D1CE4E5B9ull ^
                    (c + 0x94D049BB133111EBull) * 0x2545F4914F6CDD1Dull;
  x ^= x >> 30, x *= 0xBF58476D1CE4E5B9ull, x ^= x >> 27, x *= 0x94D049BB133111EBull, x ^= x >> 31;
  return x;
}
float hashf(std::uint64_t a, std::uint64_t b, std::uint64_t c) {  // in [-1, 1)
  return static_cast<float>(static_cast<double>(mix(a, b, c) >> 40) / static_cast<double>(1ull << 23) - 1.0);
}

enum class Routing {
  Random,         // k distinct experts anywhere
  NoRowsOnRank0,  // only experts of ep ranks >= 1: ep rank 0 receives no rows (every expert at ep 1)
  EmptyExperts,   // experts 1 and E-2 never chosen (at ep 4 they are on ep ranks 0 and 3)
  OneRank,        // only the experts of the last ep rank
  Padded,         // random, with every third token and all tokens of world rank 1 dropped (mask 0)
};

struct Tokens {
  Tensor x, ids, rw, dout, mask;  // [n,H] f32, [n,k] i32, [n,k] f32, [n,H] f32, [n] f32
};

// The tokens of world ranks [first_rank, first_rank + ranks), T each, in rank order.
Tokens make_tokens(Routing routing, int ep, int first_rank, int ranks) {
  const std::int64_t n = ranks * kT, El = kE / ep;
  Tokens tk{Tensor::empty({n, kH}, DType::F32), Tensor::empty({n, kTopK}, DType::I32),
            Tensor::empty({n, kTopK}, DType::F32), Tensor::empty({n, kH}, DType::F32), Tensor::empty({n}, DType::F32)};
  std::vector<std::int32_t> allowed;
  for (std::int32_t e = 0; e < kE; ++e) {
    bool ok = true;
    if (routing == Routing::NoRowsOnRank0 && ep > 1) ok = e >= El;
    if (routing == Routing::EmptyExperts) ok = e != 1 && e != kE - 2;
    if (routing == Routing::OneRank) ok = e >= (ep - 1) * El;
    if (ok) allowed.push_back(e);
  }
  REQUIRE(static_cast<std::int64_t>(allowed.size()) >= kTopK);
  const auto na = static_cast<std::uint64_t>(allowed.size());
  for (std::int64_t i = 0; i < n; ++i) {
    const auto g = static_cast<std::uint64_t>(first_rank * kT + i);  // global token id
    const auto seed = static_cast<std::uint64_t>(routing);
    for (std::int64_t h = 0; h < kH; ++h) {
      tk.x.data<float>()[i * kH + h] = hashf(seed, g, static_cast<std::uint64_t>(h));
      tk.dout.data<float>()[i * kH + h] = hashf(seed + 100, g, static_cast<std::uint64_t>(h));
    }
    // k distinct picks from `allowed` (k = 2): a first one, then an offset from it.
    const std::uint64_t a = mix(seed + 200, g, 0) % na, b = (a + 1 + mix(seed + 200, g, 1) % (na - 1)) % na;
    tk.ids.data<std::int32_t>()[i * kTopK] = allowed[a];
    tk.ids.data<std::int32_t>()[i * kTopK + 1] = allowed[b];
    for (std::int64_t j = 0; j < kTopK; ++j)
      tk.rw.data<float>()[i * kTopK + j] = 0.75f + 0.25f * hashf(seed + 300, g, static_cast<std::uint64_t>(j));
    const int rank = first_rank + static_cast<int>(i / kT);
    tk.mask.data<float>()[i] = routing == Routing::Padded && (g % 3 == 0 || rank == 1) ? 0.f : 1.f;
  }
  return tk;
}

// The full expert weights, the same on every rank: gate_and_up_projs [E, H, 2Fm], down_projs [E, Fm, H].
Tensor expert_weights(Shape shape, std::uint64_t which) {
  Tensor w = Tensor::empty(std::move(shape), DType::F32);
  for (std::int64_t i = 0; i < w.numel(); ++i) w.data<float>()[i] = 0.5f * hashf(900 + which, 0, static_cast<std::uint64_t>(i));
  return w;
}

struct MoeRun {
  std::int64_t N = 0;  // rows this rank routed
  Tensor counts, xp, xr, out, drw, dx, dw1, dw2;  // xr: the rows the local experts ran on
  ExpertRoute route;
};

// One MoE branch's experts forward and backward on `tk`. With an exchange: the rows go to the owners of
// their experts, the local experts (w1/w2 rows [first, first + El)) run on what arrived, the results
// come back; without: every expert is local.
MoeRun run_moe(const Tokens& tk, const Tensor& w1, const Tensor& w2, ExpertExchange* ex) {
  const std::int64_t n = tk.x.size(0);
  MoeRun r;
  r.counts = Tensor::empty({kE}, DType::I32);
  Tensor row_token = Tensor::empty({n * kTopK}, DType::I32), slot_row = Tensor::empty({n, kTopK}, DType::I32);
  r.N = moe_permute_plan(tk.ids, kE, r.counts, row_token, slot_row, tk.mask);
  r.xp = Tensor::empty({r.N, kH}, DType::F32);
  moe_gather(tk.x, row_token, r.xp);

  Tensor counts = r.counts, lw1 = w1, lw2 = w2;
  if (ex != nullptr) {
    r.route = ex->route(r.counts);
    r.xr = Tensor::empty({r.route.received, kH}, DType::F32);
    ex->to_owners(r.route, r.xp, r.xr);
    counts = r.route.local_counts;
    lw1 = w1.rows(ex->first_expert(), ex->first_expert() + ex->local_experts());
    lw2 = w2.rows(ex->first_expert(), ex->first_expert() + ex->local_experts());
  } else {
    r.xr = r.xp;
  }
  const std::int64_t nr = r.xr.size(0);
  Tensor gu = Tensor::empty({nr, 2 * kFm}, DType::F32), act = Tensor::empty({nr, kFm}, DType::F32),
         yr = Tensor::empty({nr, kH}, DType::F32);
  grouped_gemm(r.xr, lw1, counts, gu);
  geglu(gu, act);
  grouped_gemm(act, lw2, counts, yr);
  Tensor yp = yr;
  if (ex != nullptr) {
    yp = Tensor::empty({r.N, kH}, DType::F32);
    ex->to_sources(r.route, yr, yp);
  }
  r.out = Tensor::empty({n, kH}, DType::F32);
  moe_combine(yp, tk.rw, slot_row, r.out);

  // Backward.
  Tensor dyp = Tensor::empty({r.N, kH}, DType::F32);
  r.drw = Tensor::empty({n, kTopK}, DType::F32);
  moe_combine_backward(tk.dout, yp, tk.rw, slot_row, dyp, r.drw);
  Tensor dyr = dyp;
  if (ex != nullptr) {
    dyr = Tensor::empty({nr, kH}, DType::F32);
    ex->to_owners(r.route, dyp, dyr);
  }
  r.dw1 = Tensor::zeros(lw1.shape(), DType::F32);
  r.dw2 = Tensor::zeros(lw2.shape(), DType::F32);
  Tensor dact = Tensor::empty({nr, kFm}, DType::F32), dgu = Tensor::empty({nr, 2 * kFm}, DType::F32),
         dxr = Tensor::empty({nr, kH}, DType::F32);
  grouped_gemm_backward(act, lw2, counts, dyr, &dact, &r.dw2);
  geglu_backward(dact, gu, dgu);
  grouped_gemm_backward(r.xr, lw1, counts, dgu, &dxr, &r.dw1);
  Tensor dxp = dxr;
  if (ex != nullptr) {
    dxp = Tensor::empty({r.N, kH}, DType::F32);
    ex->to_sources(r.route, dxr, dxp);
  }
  r.dx = Tensor::empty({n, kH}, DType::F32);
  moe_gather_backward(dxp, slot_row, r.dx);
  return r;
}

// max |a - b| / max(max |b|, 1e-30): the error relative to the reference tensor's scale.
double rel_err(const float* a, const float* b, std::int64_t n) {
  double diff = 0, scale = 1e-30;
  for (std::int64_t i = 0; i < n; ++i) {
    diff = std::max(diff, std::abs(static_cast<double>(a[i]) - b[i]));
    scale = std::max(scale, std::abs(static_cast<double>(b[i])));
  }
  return diff / scale;
}
bool bitwise(const float* a, const float* b, std::int64_t n) { return n == 0 || std::equal(a, a + n, b); }

constexpr double kTol = 1e-6, kSumTol = 1e-5;

void check_exchange(Routing routing) {
  Comm& c = *world();
  const Tensor w1 = expert_weights({kE, kH, 2 * kFm}, 1), w2 = expert_weights({kE, kFm, kH}, 2);
  for (int ep : {1, 2, 4}) {
    if (c.size() % ep != 0) continue;
    CAPTURE(ep);
    Mesh mesh = make_mesh(c, ep, kE, 0);
    MeshExpertExchange ex(mesh);
    const std::int64_t El = kE / ep, first = ex.first_expert(), me = mesh.ep_rank();
    REQUIRE(ex.local_experts() == El);
    REQUIRE(first == me * El);
    const int group_first = c.rank() - static_cast<int>(me);  // world rank of ep rank 0 of my group

    const Tokens mine = make_tokens(routing, ep, c.rank(), 1);
    const MoeRun got = run_moe(mine, w1, w2, &ex);
    const Tokens group = make_tokens(routing, ep, group_first, ep);
    const MoeRun ref = run_moe(group, w1, w2, nullptr);  // single rank, all experts, the ep group's tokens

    // The route: what this rank sends to each owner and what it receives, against the reference counts.
    const std::int32_t* rc = ref.counts.data<std::int32_t>();
    std::int64_t sent = 0;
    for (int p = 0; p < ep; ++p) {
      std::int64_t want = 0;
      for (std::int64_t e = p * El; e < (p + 1) * El; ++e) want += got.counts.data<std::int32_t>()[e];
      CHECK(got.route.send_rows[static_cast<std::size_t>(p)] == want);
      sent += want;
    }
    CHECK(sent == got.N);
    std::int64_t received = 0;
    for (std::int64_t e = 0; e < El; ++e) {
      CHECK(got.route.local_counts.data<std::int32_t>()[e] == rc[first + e]);
      received += rc[first + e];
    }
    CHECK(got.route.received == received);
    CHECK(got.xr.size(0) == received);
    // The case does what it says.
    if (routing == Routing::NoRowsOnRank0 && ep > 1 && me == 0) CHECK(received == 0);
    if (routing == Routing::EmptyExperts) CHECK((rc[1] == 0 && rc[kE - 2] == 0));
    if (routing == Routing::OneRank) CHECK(received == (me == ep - 1 ? ref.N : 0));
    if (routing == Routing::Padded && c.rank() == 1) CHECK(got.N == 0);

    // to_owners: the local experts' rows, bitwise, in the reference's order (expert, source, sender order).
    std::int64_t off = 0;
    for (std::int64_t e = 0; e < first; ++e) off += rc[e];
    CHECK(bitwise(got.xr.data<float>(), ref.xp.data<float>() + off * kH, received * kH));

    // Outputs and input gradients of this rank's tokens: rows [me·T, (me+1)·T) of the group reference.
    const std::int64_t at = me * kT;
    const double e_out = rel_err(got.out.data<float>(), ref.out.data<float>() + at * kH, kT * kH);
    const double e_dx = rel_err(got.dx.data<float>(), ref.dx.data<float>() + at * kH, kT * kH);
    const double e_drw = rel_err(got.drw.data<float>(), ref.drw.data<float>() + at * kTopK, kT * kTopK);
    CHECK(e_out <= kTol);
    CHECK(e_dx <= kTol);
    CHECK(e_drw <= kTol);
    // The local experts' weight gradients: the owner's rows of the group reference (rows from every
    // source of the group meet on the owner).
    const std::int64_t n1 = El * kH * 2 * kFm, n2 = El * kFm * kH;
    const float* r1 = ref.dw1.data<float>() + first * kH * 2 * kFm;
    const float* r2 = ref.dw2.data<float>() + first * kFm * kH;
    const double e_dw1 = rel_err(got.dw1.data<float>(), r1, n1), e_dw2 = rel_err(got.dw2.data<float>(), r2, n2);
    CHECK(e_dw1 <= kTol);
    CHECK(e_dw2 <= kTol);
    const bool exact = bitwise(got.out.data<float>(), ref.out.data<float>() + at * kH, kT * kH) &&
                       bitwise(got.dx.data<float>(), ref.dx.data<float>() + at * kH, kT * kH) &&
                       bitwise(got.drw.data<float>(), ref.drw.data<float>() + at * kTopK, kT * kTopK) &&
                       bitwise(got.dw1.data<float>(), r1, n1) && bitwise(got.dw2.data<float>(), r2, n2);
    if (!exact)
      MESSAGE("not bitwise (rank " << c.rank() << ", ep " << ep << "): out " << e_out << ", dx " << e_dx << ", drw "
                                   << e_drw << ", dw1 " << e_dw1 << ", dw2 " << e_dw2);
    if (received == 0) {  // an owner without rows leaves its experts' gradients untouched (zero)
      for (std::int64_t i = 0; i < n1; ++i) CHECK(got.dw1.data<float>()[i] == 0.f);
      for (std::int64_t i = 0; i < n2; ++i) CHECK(got.dw2.data<float>()[i] == 0.f);
    }

    // Summed over the expert replicas (the ranks of the other ep groups holding the same experts), the
    // weight gradients are those of all the world's tokens.
    Tensor dw1 = got.dw1.clone(), dw2 = got.dw2.clone();
    all_reduce(*mesh.replica, dw1);
    all_reduce(*mesh.replica, dw2);
    const MoeRun all = run_moe(make_tokens(routing, ep, 0, c.size()), w1, w2, nullptr);
    CHECK(rel_err(dw1.data<float>(), all.dw1.data<float>() + first * kH * 2 * kFm, n1) <= kSumTol);
    CHECK(rel_err(dw2.data<float>(), all.dw2.data<float>() + first * kFm * kH, n2) <= kSumTol);

    // Traffic: 4 exchanges (rows out and back, forward and backward), each sending and receiving; rows
    // to / from this rank itself do not count.
    const auto self = static_cast<std::size_t>(me);
    const double moved = static_cast<double>(got.N - got.route.send_rows[self] + received -
                                             got.route.recv_rows[self]) * 2.0 * kH * 4.0;
    CHECK(ex.traffic().exchanges == 4);
    CHECK(ex.traffic().sent_bytes == moved);
    CHECK(ex.traffic().received_bytes == moved);
    CHECK(got.route.recv_rows[self] == got.route.send_rows[self]);
  }
}

}  // namespace

TEST_CASE("expert exchange: random routing, forward and backward equal the single-rank experts") {
  check_exchange(Routing::Random);
}

TEST_CASE("expert exchange: an ep rank that receives no rows") {
  check_exchange(Routing::NoRowsOnRank0);
}

TEST_CASE("expert exchange: experts with no rows") {
  check_exchange(Routing::EmptyExperts);
}

TEST_CASE("expert exchange: every row routed to one rank's experts") {
  check_exchange(Routing::OneRank);
}

TEST_CASE("expert exchange: dropped (padded) tokens, and a rank that sends no rows") {
  check_exchange(Routing::Padded);
}

TEST_CASE("expert exchange: the counts must cover every expert of the group") {
  Comm& c = *world();
  Mesh mesh = make_mesh(c, c.size(), kE, 0);
  MeshExpertExchange ex(mesh);
  Tensor bad = Tensor::zeros({kE + 1}, DType::I32);
  CHECK_THROWS_AS(ex.route(bad), Error);  // checked before any communication
}
