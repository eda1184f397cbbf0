// CPU GEMM on OpenBLAS (row-major cblas_sgemm), batched by a loop over strided entries; in batch-invariant
// mode, constant weights (layers/gemm_weights.h) on oneDNN's matmul with B packed once (DGEMMA_ONEDNN).
#include <cblas.h>

#include <algorithm>
#include <cstdlib>
#include <map>
#include <memory>
#include <mutex>
#include <new>
#include <string_view>
#include <tuple>
#include <unordered_map>
#include <vector>

#include "layers/cpu/parallel.h"
#include "layers/gemm_weights.h"
#include "layers/ops.h"

#if defined(DGEMMA_ONEDNN)
#include <omp.h>

#include <dnnl.hpp>
#endif

namespace dg {

namespace {
bool g_batch_invariant = false;
}  // namespace

void set_batch_invariant(bool on) { g_batch_invariant = on; }
bool batch_invariant() { return g_batch_invariant; }

void set_cpu_threads(int n) { openblas_set_num_threads(std::max(1, n)); }
int cpu_threads() { return openblas_get_num_threads(); }

}  // namespace dg

namespace dg::cpu {

namespace {

// 64-byte aligned scratch of the batch-invariant GEMM, grown as needed (the same alignment for every call).
class AlignedScratch {
 public:
  ~AlignedScratch() { release(); }
  float* get(std::int64_t count) {
    if (count > size_) {
      release();
      p_ = static_cast<float*>(::operator new(static_cast<std::size_t>(count) * sizeof(float), std::align_val_t{64}));
      std::fill_n(p_, count, 0.f);
      size_ = count;
    }
    return p_;
  }

 private:
  void release() {
    if (p_ != nullptr) ::operator delete(p_, std::align_val_t{64});
    p_ = nullptr;
    size_ = 0;
  }
  float* p_ = nullptr;
  std::int64_t size_ = 0;
};

void blas(bool trans_a, bool trans_b, std::int64_t m, std::int64_t n, std::int64_t k, float alpha, const float* a,
          std::int64_t lda, const float* b, std::int64_t ldb, float beta, float* c, std::int64_t ldc) {
  cblas_sgemm(CblasRowMajor, trans_a ? CblasTrans : CblasNoTrans, trans_b ? CblasTrans : CblasNoTrans,
              static_cast<blasint>(m), static_cast<blasint>(n), static_cast<blasint>(k), alpha, a,
              static_cast<blasint>(lda), b, static_cast<blasint>(ldb), beta, c, static_cast<blasint>(ldc));
}

// ---- Constant weights, packed once (layers/gemm_weights.h) ------------------------------------------
// The registered element ranges, by start address. A B is constant when the ranges cover its whole extent
// (one range, or adjacent ones: the gate and up row views of a fused gate_up weight).
struct ConstantRange {
  std::int64_t id;
  const char* end;
};
std::mutex g_constants_mu;
std::multimap<const char*, ConstantRange> g_constants;
std::int64_t g_next_constant_id = 0;

#if defined(DGEMMA_ONEDNN)
bool is_constant(const float* b, std::int64_t extent) {
  const char* pos = reinterpret_cast<const char*>(b);
  const char* const hi = reinterpret_cast<const char*>(b + extent);
  std::lock_guard<std::mutex> lock(g_constants_mu);
  while (pos < hi) {  // extend the covered prefix [b, pos) by the range reaching furthest from inside it
    const char* reach = pos;
    for (auto it = g_constants.begin(); it != g_constants.end() && it->first <= pos; ++it)
      reach = std::max(reach, it->second.end);
    if (reach == pos) return false;
    pos = reach;
  }
  return true;
}

// One matmul primitive per (B layout, N, K, alpha, beta), of shape [kInvariantRows, N, K] with its
// weights in the layout the primitive prefers (format_tag::any), and per constant B its reordered copy.
// Entries live until the last ConstantWeights is destroyed.
struct PackKey {
  bool tb;
  std::int64_t n, k, ldb;
  float alpha, beta;
  auto tie() const { return std::tie(tb, n, k, ldb, alpha, beta); }
  bool operator<(const PackKey& o) const { return tie() < o.tie(); }
};
struct PackedMatmul {
  bool use = false;  // oneDNN chose its brgemm kernels (AVX-512 and up); otherwise OpenBLAS is as fast or faster
  dnnl::matmul prim;  // user scratchpad: stateless, so that the CPU threads may run it on their tiles at once
  dnnl::memory::desc a, c, b_user, b_packed, scratchpad;
};
struct PackCache {
  std::map<PackKey, std::shared_ptr<PackedMatmul>> prims;  // shared: a running GEMM keeps its own
  std::map<std::pair<PackKey, const float*>, dnnl::memory> packed_b;
};
PackCache& pack_cache() {
  static PackCache cache;
  return cache;
}
dnnl::engine& dnnl_engine() {
  static dnnl::engine e(dnnl::engine::kind::cpu, 0);
  return e;
}
#endif

// Row tiles of the batch-invariant form (sgemm_row_tiles).
constexpr std::int64_t kInvariantRows = 16;

// Tile [r0, r0 + rows) of A (and of C when beta != 0) into the tile scratch ta [16, k] / tc [16, n], and the
// tile's C back: the same copies for the OpenBLAS and the packed path.
void load_tile(const float* a, std::int64_t lda, const float* c, std::int64_t ldc, float beta, std::int64_t r0,
               std::int64_t rows, std::int64_t k, std::int64_t n, float* ta, float* tc) {
  for (std::int64_t i = 0; i < rows; ++i) {
    std::copy_n(a + (r0 + i) * lda, k, ta + i * k);
    if (beta != 0.0f) std::copy_n(c + (r0 + i) * ldc, n, tc + i * n);
  }
}
void store_tile(const float* tc, std::int64_t r0, std::int64_t rows, std::int64_t n, float* c, std::int64_t ldc) {
  for (std::int64_t i = 0; i < rows; ++i) std::copy_n(tc + i * n, n, c + (r0 + i) * ldc);
}

#if defined(DGEMMA_ONEDNN)
// One OpenMP thread inside oneDNN while it lives, on the calling thread: the tiles are what runs in parallel.
// (oneDNN threads with OpenMP and sizes its work for omp_get_max_threads(); its spinning workers and
// OpenBLAS's took each other's cores, docs/performance.md "GEMM library".)
struct OneOmpThread {
  int before = omp_get_max_threads();
  OneOmpThread() {
    if (before != 1) omp_set_num_threads(1);
  }
  ~OneOmpThread() {
    if (before != 1) omp_set_num_threads(before);
  }
  OneOmpThread(const OneOmpThread&) = delete;
  OneOmpThread& operator=(const OneOmpThread&) = delete;
};

// The primitive [kInvariantRows, N, K] for one PackKey, weights in the layout it prefers (format_tag::any).
std::shared_ptr<PackedMatmul> make_packed_matmul(bool trans_b, std::int64_t n, std::int64_t k, std::int64_t ldb,
                                                 float alpha, float beta) {
  using dims = dnnl::memory::dims;
  const auto f32 = dnnl::memory::data_type::f32;
  const dnnl::memory::desc a_md(dims{kInvariantRows, k}, f32, dims{k, 1});
  const dnnl::memory::desc c_md(dims{kInvariantRows, n}, f32, dims{n, 1});
  const dnnl::memory::desc b_any(dims{k, n}, f32, dnnl::memory::format_tag::any);
  dnnl::primitive_attr attr;
  attr.set_scratchpad_mode(dnnl::scratchpad_mode::user);
  if (alpha != 1.0f) attr.set_output_scales(0, {alpha});
  if (beta != 0.0f) {
    dnnl::post_ops ops;
    ops.append_sum(beta);
    attr.set_post_ops(ops);
  }
  auto mm = std::make_shared<PackedMatmul>();
  try {
    const dnnl::matmul::primitive_desc pd(dnnl::matmul::desc(a_md, b_any, c_md), attr, dnnl_engine());
    mm->use = std::string_view(pd.impl_info_str()).starts_with("brg");
    mm->prim = dnnl::matmul(pd);
    mm->a = a_md;
    mm->c = c_md;
    mm->b_user = dnnl::memory::desc(dims{k, n}, f32, trans_b ? dims{1, ldb} : dims{ldb, 1});
    mm->b_packed = pd.weights_desc();
    mm->scratchpad = pd.scratchpad_desc();
  } catch (const dnnl::error&) {  // no implementation for this case: OpenBLAS runs it
    mm->use = false;
  }
  return mm;
}

// Runs the tiles of sgemm_row_tiles on the packed copy of B; false when B is not a constant weight, is too
// small to gain, or oneDNN has no brgemm kernel on this CPU (its fallback is slower than OpenBLAS), so that
// OpenBLAS runs them. The tiles are spread over the CPU threads (layers/cpu/parallel.h); each runs the same
// primitive on its own copy of its rows, so a row's bits depend neither on its batch mates nor on the threads.
bool packed_row_tiles(bool trans_b, std::int64_t m, std::int64_t n, std::int64_t k, float alpha, const float* a,
                      std::int64_t lda, const float* b, std::int64_t ldb, float beta, float* c, std::int64_t ldc) {
  if (n * k < kMinPackedWeightElements) return false;
  if (!is_constant(b, trans_b ? (n - 1) * ldb + k : (k - 1) * ldb + n)) return false;
  const PackKey key{trans_b, n, k, ldb, alpha, beta};
  std::shared_ptr<const PackedMatmul> mm;
  dnnl::memory packed;
  {
    // Created for one OpenMP thread: oneDNN fixes a primitive's thread count and work split (the K split
    // among them) when it creates it, and the tiles below each run it on one thread.
    const OneOmpThread one_thread;
    std::lock_guard<std::mutex> lock(g_constants_mu);
    PackCache& cache = pack_cache();
    std::shared_ptr<PackedMatmul>& entry = cache.prims[key];
    if (!entry) entry = make_packed_matmul(trans_b, n, k, ldb, alpha, beta);
    if (!entry->use) return false;
    mm = entry;
    auto [it, fresh] = cache.packed_b.try_emplace({key, b});
    if (fresh) {  // first use of this B: reordered once into the primitive's layout
      dnnl::stream stream(dnnl_engine());
      dnnl::memory user(mm->b_user, dnnl_engine(), const_cast<float*>(b));
      it->second = dnnl::memory(mm->b_packed, dnnl_engine());
      dnnl::reorder(user, it->second).execute(stream, user, it->second);
      stream.wait();
    }
    packed = it->second;
  }
  const std::int64_t tiles = (m + kInvariantRows - 1) / kInvariantRows;
  parallel_for("gemm.packed_tiles", tiles, 2 * kInvariantRows * n * k, [&](std::int64_t t) {
    const OneOmpThread one_thread;
    thread_local AlignedScratch tile_a, tile_c, scratch;
    thread_local dnnl::stream stream(dnnl_engine());
    float* ta = tile_a.get(kInvariantRows * k);
    float* tc = tile_c.get(kInvariantRows * n);
    float* sp = scratch.get(static_cast<std::int64_t>(mm->scratchpad.get_size() / sizeof(float)) + 1);
    const std::int64_t r0 = t * kInvariantRows, rows = std::min(kInvariantRows, m - r0);
    load_tile(a, lda, c, ldc, beta, r0, rows, k, n, ta, tc);
    const dnnl::memory am(mm->a, dnnl_engine(), ta), cm(mm->c, dnnl_engine(), tc),
        spm(mm->scratchpad, dnnl_engine(), sp);
    mm->prim.execute(stream, {{DNNL_ARG_SRC, am}, {DNNL_ARG_WEIGHTS, packed}, {DNNL_ARG_DST, cm},
                              {DNNL_ARG_SCRATCHPAD, spm}});
    stream.wait();
    store_tile(tc, r0, rows, n, c, ldc);
  });
  return true;
}
#endif

// Batch-invariant form: A's rows go through BLAS in tiles of kInvariantRows, each tile copied into 64-byte
// aligned scratch, so every call has the same shape [kInvariantRows, n, k] and the same alignment whatever
// the call's row count and a row's place in it. OpenBLAS chooses its kernel, blocking and edge handling from
// the call's shape, and its micro-kernels run the same instructions for every row of a tile, so a row's
// result depends on that row and B only. (A tile's unused rows hold old scratch: GEMM rows do not mix.)
// The cost: up to kInvariantRows - 1 padding rows per call, and B streamed once per tile (and, on OpenBLAS,
// packed again for every tile: a constant B goes to packed_row_tiles instead).

void sgemm_row_tiles(bool trans_b, std::int64_t m, std::int64_t n, std::int64_t k, float alpha, const float* a,
                     std::int64_t lda, const float* b, std::int64_t ldb, float beta, float* c, std::int64_t ldc) {
#if defined(DGEMMA_ONEDNN)
  if (packed_row_tiles(trans_b, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc)) return;
#endif
  thread_local AlignedScratch tile_a, tile_c;
  float* ta = tile_a.get(kInvariantRows * k);
  float* tc = tile_c.get(kInvariantRows * n);
  for (std::int64_t r0 = 0; r0 < m; r0 += kInvariantRows) {
    const std::int64_t rows = std::min(kInvariantRows, m - r0);
    load_tile(a, lda, c, ldc, beta, r0, rows, k, n, ta, tc);
    blas(false, trans_b, kInvariantRows, n, k, alpha, ta, k, b, ldb, beta, tc, n);
    store_tile(tc, r0, rows, n, c, ldc);
  }
}

}  // namespace

void sgemm(bool trans_a, bool trans_b, std::int64_t m, std::int64_t n, std::int64_t k, float alpha,
           const float* a, std::int64_t lda, const float* b, std::int64_t ldb, float beta, float* c,
           std::int64_t ldc) {
  if (m == 0 || n == 0) return;
  if (k == 0) {  // BLAS would be asked for nothing: C = beta * C by hand (beta = 0 clears NaNs)
    for (std::int64_t i = 0; i < m; ++i)
      for (std::int64_t j = 0; j < n; ++j) c[i * ldc + j] = beta == 0.f ? 0.f : beta * c[i * ldc + j];
    return;
  }
  if (batch_invariant() && !trans_a) return sgemm_row_tiles(trans_b, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
  blas(trans_a, trans_b, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
}

void gemm(const Tensor& a, const Tensor& b, Tensor& c, const GemmOpts& o) {
  const GemmDims d = gemm_dims(a, b, c, o);
  DG_CHECK(a.dtype() == DType::F32 && b.dtype() == DType::F32 && c.dtype() == DType::F32,
           "CPU gemm is f32 only: {}, {}, {}", a.describe(), b.describe(), c.describe());
  const float* pa = a.data<float>();
  const float* pb = b.data<float>();
  float* pc = c.data<float>();
  for (std::int64_t i = 0; i < d.batch; ++i)
    sgemm(o.trans_a, o.trans_b, d.m, d.n, d.k, o.alpha, pa + i * d.stride_a, d.lda, pb + i * d.stride_b, d.ldb,
          o.beta, pc + i * d.stride_c, d.ldc);
}

}  // namespace dg::cpu

namespace dg {

ConstantWeights::ConstantWeights(const std::vector<Tensor>& tensors) {
  std::lock_guard<std::mutex> lock(cpu::g_constants_mu);
  for (const Tensor& t : tensors) {
    if (!t.is_cpu() || t.dtype() != DType::F32 || t.numel() == 0) continue;
    const char* lo = static_cast<const char*>(t.raw());
    ids_.push_back(cpu::g_next_constant_id);
    cpu::g_constants.emplace(lo, cpu::ConstantRange{cpu::g_next_constant_id++, lo + t.nbytes()});
  }
}

ConstantWeights::~ConstantWeights() {
  std::lock_guard<std::mutex> lock(cpu::g_constants_mu);
  for (auto it = cpu::g_constants.begin(); it != cpu::g_constants.end();)
    it = std::find(ids_.begin(), ids_.end(), it->second.id) != ids_.end() ? cpu::g_constants.erase(it) : std::next(it);
#if defined(DGEMMA_ONEDNN)
  // Packed copies of a B no longer covered go; the primitives stay only while some weights are registered.
  auto& packed = cpu::pack_cache().packed_b;
  for (auto it = packed.begin(); it != packed.end();) {
    bool covered = false;
    const char* b = reinterpret_cast<const char*>(it->first.second);
    for (const auto& [lo, r] : cpu::g_constants) covered = covered || (lo <= b && b < r.end);
    it = covered ? std::next(it) : packed.erase(it);
  }
  if (cpu::g_constants.empty()) cpu::pack_cache().prims.clear();
#endif
}

}  // namespace dg
