// GEMM libraries side by side on dgemma's own shapes (fp32, row-major, NN / NT / TN as layers/cpu/gemm.cpp
// calls them), in one process, repetitions interleaved: OpenBLAS (pthread and OpenMP builds), BLIS, ATLAS,
// oneDNN (dnnl_sgemm; the matmul primitive on B as stored; on B reordered once into the primitive's preferred
// blocked layout, or reordered in every call) and Eigen; besides one call of M rows, `generate`'s
// batch-invariant path (M rows as M / 16 calls of [16, N, K] on the same B). Built and run by scripts/bench_gemm_libs.sh; the results are in
// docs/performance.md ("GEMM library").
//
// The BLAS libraries all export cblas_sgemm, so none is linked: each is dlopen'ed from its own path with
// RTLD_LOCAL | RTLD_DEEPBIND and called through the pointers taken from it. oneDNN (no cblas symbols) and
// Eigen (headers) are linked / compiled in. A library whose file is missing is skipped with a note.
//
// Timing: for each thread count, each shape and each repetition, every library runs one block of calls
// (calibrated to about --block-ms) in turn; a library's time per call is the block time / calls, and its
// result is the min and the median over the repetitions. Between two blocks the process waits until it uses
// no CPU (OpenBLAS's pthread workers spin for a while after a call, and would otherwise slow the next
// library down). Every library's C is checked against a double-precision reference once per shape.
#include <dlfcn.h>
#include <omp.h>
#include <sys/resource.h>

#include <Eigen/Core>
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <memory>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include <dnnl.hpp>

namespace {

using i64 = std::int64_t;

struct Shape {
  std::string group;  // decode / prefill-sft
  std::string what;   // where dgemma runs it
  bool ta, tb;
  i64 m, n, k;
  bool tiles = false;  // the batch-invariant path: M rows as M / 16 calls of [16, n, k] (NN / NT only)
  std::string op() const { return std::string(ta ? "T" : "N") + (tb ? "T" : "N"); }
};
constexpr i64 kTile = 16;  // layers/cpu/gemm.cpp's kInvariantRows

// One library's way to run a shape: prepare() does what may be done once per weight (packing), outside the
// timing; the returned callable runs one GEMM C = A op B.
struct Lib {
  std::string name;
  std::string note;
  std::function<void(int)> set_threads;
  std::function<std::function<void()>(const Shape&, const float*, const float*, float*)> prepare;
  bool single_thread_only = false;
  bool whole = true;   // runs the one-call shapes
  bool tiled = true;   // runs the 16-row-tile shapes
};

double cpu_seconds() {
  rusage u{};
  getrusage(RUSAGE_SELF, &u);
  return u.ru_utime.tv_sec + u.ru_stime.tv_sec + 1e-6 * (u.ru_utime.tv_usec + u.ru_stime.tv_usec);
}

// Wait until the process's threads stop using CPU (at most 0.5 s).
void quiesce() {
  for (int i = 0; i < 100; ++i) {
    const double c0 = cpu_seconds();
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
    if (cpu_seconds() - c0 < 0.5e-3) return;
  }
}

using cblas_sgemm_t = void (*)(int, int, int, int, int, int, float, const float*, int, const float*, int, float,
                               float*, int);
constexpr int kRowMajor = 101, kNoTrans = 111, kTrans = 112;

std::unique_ptr<Lib> cblas_lib(const std::string& name, const std::string& path, const char* threads_fn,
                               bool threads_take_i64) {
  void* h = dlopen(path.c_str(), RTLD_NOW | RTLD_LOCAL | RTLD_DEEPBIND);
  if (h == nullptr) {
    std::fprintf(stderr, "skipping %s: %s\n", name.c_str(), dlerror());
    return nullptr;
  }
  auto gemm = reinterpret_cast<cblas_sgemm_t>(dlsym(h, "cblas_sgemm"));
  if (gemm == nullptr) {
    std::fprintf(stderr, "skipping %s: no cblas_sgemm in %s\n", name.c_str(), path.c_str());
    return nullptr;
  }
  auto lib = std::make_unique<Lib>();
  lib->name = name;
  lib->note = path;
  void* tf = threads_fn ? dlsym(h, threads_fn) : nullptr;
  if (tf == nullptr) {
    lib->single_thread_only = true;
    lib->set_threads = [](int) {};
  } else if (threads_take_i64) {
    auto f = reinterpret_cast<void (*)(i64)>(tf);
    lib->set_threads = [f](int n) { f(n); };
  } else {
    auto f = reinterpret_cast<void (*)(int)>(tf);
    lib->set_threads = [f](int n) { f(n); };
  }
  if (auto corename = reinterpret_cast<char* (*)()>(dlsym(h, "openblas_get_corename")))
    lib->note += std::string(" (core ") + corename() + ")";
  if (auto qid = reinterpret_cast<int (*)()>(dlsym(h, "bli_arch_query_id")))
    if (auto str = reinterpret_cast<const char* (*)(int)>(dlsym(h, "bli_arch_string")))
      lib->note += std::string(" (arch ") + str(qid()) + ")";
  lib->prepare = [gemm](const Shape& s, const float* a, const float* b, float* c) -> std::function<void()> {
    const int lda = static_cast<int>(s.ta ? s.m : s.k), ldb = static_cast<int>(s.tb ? s.k : s.n);
    if (s.tiles)
      return [=] {
        for (i64 r0 = 0; r0 < s.m; r0 += kTile)
          gemm(kRowMajor, kNoTrans, s.tb ? kTrans : kNoTrans, kTile, static_cast<int>(s.n), static_cast<int>(s.k),
               1.0f, a + r0 * s.k, lda, b, ldb, 0.0f, c + r0 * s.n, static_cast<int>(s.n));
      };
    return [=] {
      gemm(kRowMajor, s.ta ? kTrans : kNoTrans, s.tb ? kTrans : kNoTrans, static_cast<int>(s.m),
           static_cast<int>(s.n), static_cast<int>(s.k), 1.0f, a, lda, b, ldb, 0.0f, c, static_cast<int>(s.n));
    };
  };
  return lib;
}

dnnl::engine& dnnl_engine() {
  static dnnl::engine e(dnnl::engine::kind::cpu, 0);
  return e;
}
dnnl::stream& dnnl_stream() {
  static dnnl::stream s(dnnl_engine());
  return s;
}

std::unique_ptr<Lib> onednn_sgemm() {
  auto lib = std::make_unique<Lib>();
  lib->name = "oneDNN sgemm";
  lib->tiled = false;
  lib->note = "dnnl_sgemm, libdnnl " + std::to_string(dnnl_version()->major) + "." +
              std::to_string(dnnl_version()->minor) + "." + std::to_string(dnnl_version()->patch);
  lib->set_threads = [](int n) { omp_set_num_threads(n); };
  lib->prepare = [](const Shape& s, const float* a, const float* b, float* c) -> std::function<void()> {
    return [=] {
      dnnl_sgemm(s.ta ? 'T' : 'N', s.tb ? 'T' : 'N', s.m, s.n, s.k, 1.0f, a, s.ta ? s.m : s.k, b, s.tb ? s.k : s.n,
                 0.0f, c, s.n);
    };
  };
  return lib;
}

// The matmul primitive, with B as stored (plain), or described as format_tag::any so that the primitive picks
// its blocked layout and B is reordered into it: once, outside the timing (what a model would do at load
// time: "packed once"), or inside every timed call ("packed per call": the reorder is paid each call, and on
// the tile shapes shared by the call's tiles).
enum class Pack { none, once, per_call };

std::unique_ptr<Lib> onednn_matmul(Pack pack, std::vector<std::string>* impls) {
  auto lib = std::make_unique<Lib>();
  lib->name = pack == Pack::none ? "oneDNN matmul" : pack == Pack::once ? "oneDNN packed once" : "oneDNN packed per call";
  lib->note = pack == Pack::none ? "matmul primitive on the row-major B as stored"
              : pack == Pack::once ? "matmul primitive, B reordered once to the primitive's layout (not timed)"
                                   : "matmul primitive, B reordered to the primitive's layout in every call (timed)";
  lib->whole = pack != Pack::per_call;
  lib->set_threads = [](int n) { omp_set_num_threads(n); };
  lib->prepare = [pack, impls](const Shape& s, const float* a, const float* b, float* c) -> std::function<void()> {
    using dt = dnnl::memory::data_type;
    using tag = dnnl::memory::format_tag;
    auto& eng = dnnl_engine();
    const i64 m = s.tiles ? kTile : s.m;
    const dnnl::memory::desc a_md({m, s.k}, dt::f32, s.ta ? tag::ba : tag::ab);
    const dnnl::memory::desc b_user({s.k, s.n}, dt::f32, s.tb ? tag::ba : tag::ab);
    const dnnl::memory::desc b_md = pack != Pack::none ? dnnl::memory::desc({s.k, s.n}, dt::f32, tag::any) : b_user;
    const dnnl::memory::desc c_md({m, s.n}, dt::f32, tag::ab);
    dnnl::matmul::primitive_desc pd(dnnl::matmul::desc(a_md, b_md, c_md), eng);
    if (impls) impls->push_back(pd.impl_info_str());
    std::vector<dnnl::memory> am, cm;
    for (i64 r0 = 0; r0 < s.m; r0 += m) {
      am.emplace_back(a_md, eng, const_cast<float*>(a + r0 * s.k));
      cm.emplace_back(c_md, eng, c + r0 * s.n);
    }
    dnnl::memory bu(b_user, eng, const_cast<float*>(b));
    dnnl::memory bm = bu;
    const bool reorder = pd.weights_desc() != b_user;
    if (reorder) bm = dnnl::memory(pd.weights_desc(), eng);
    auto prim = std::make_shared<dnnl::matmul>(pd);
    auto rd = reorder ? std::make_shared<dnnl::reorder>(bu, bm) : nullptr;
    if (rd && pack == Pack::once) {
      rd->execute(dnnl_stream(), bu, bm);
      dnnl_stream().wait();
    }
    const bool reorder_each = rd && pack == Pack::per_call;
    return [=]() mutable {
      if (reorder_each) rd->execute(dnnl_stream(), bu, bm);
      for (std::size_t t = 0; t < am.size(); ++t)
        prim->execute(dnnl_stream(), {{DNNL_ARG_SRC, am[t]}, {DNNL_ARG_WEIGHTS, bm}, {DNNL_ARG_DST, cm[t]}});
      dnnl_stream().wait();
    };
  };
  return lib;
}

std::unique_ptr<Lib> eigen_lib() {
  auto lib = std::make_unique<Lib>();
  lib->name = "Eigen";
  lib->tiled = false;
  lib->note = "Eigen " + std::to_string(EIGEN_WORLD_VERSION) + "." + std::to_string(EIGEN_MAJOR_VERSION) + "." +
              std::to_string(EIGEN_MINOR_VERSION) + ", this file's compile flags (see bench_gemm_libs.sh)";
  lib->set_threads = [](int n) { Eigen::setNbThreads(n); };
  lib->prepare = [](const Shape& s, const float* a, const float* b, float* c) -> std::function<void()> {
    using RM = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
    return [=] {
      Eigen::Map<const RM> A(a, s.ta ? s.k : s.m, s.ta ? s.m : s.k);
      Eigen::Map<const RM> B(b, s.tb ? s.n : s.k, s.tb ? s.k : s.n);
      Eigen::Map<RM> C(c, s.m, s.n);
      if (!s.ta && !s.tb) C.noalias() = A * B;
      else if (!s.ta) C.noalias() = A * B.transpose();
      else if (!s.tb) C.noalias() = A.transpose() * B;
      else C.noalias() = A.transpose() * B.transpose();
    };
  };
  return lib;
}

std::vector<Shape> shapes(const std::string& which) {
  std::vector<Shape> v;
  const bool all = which == "all";
  // Decode: the weight GEMMs of a denoising step, one call of M rows (M = canvas x batch, or the rows an
  // expert got). small = H 512, heads 8 x 64 (full layers 8 x 128), dense MLP 1024, 16 experts of 256, V 2048;
  // tiny = the preset (H 64, heads 4 x 16, experts of 32).
  if (all || which == "decode") {
    for (i64 m : {8, 16, 32, 64}) {
      v.push_back({"decode", "small: q/o proj", false, true, m, 512, 512});
      v.push_back({"decode", "small: dense gate_up, LM head", false, true, m, 2048, 512});
      v.push_back({"decode", "small: dense down, o proj (full)", false, true, m, 512, 1024});
      v.push_back({"decode", "small: expert gate_up", false, false, m, 512, 512});
      v.push_back({"decode", "small: expert down", false, false, m, 512, 256});
      v.push_back({"decode", "small: soft embedding P.E", false, false, m, 512, 2048});
      v.push_back({"decode", "tiny: q/o proj", false, true, m, 64, 64});
      v.push_back({"decode", "tiny: LM head", false, true, m, 2048, 64});
      v.push_back({"decode", "tiny: expert gate_up", false, false, m, 64, 64});
    }
  }
  // `dgemma generate`'s batch-invariant path: the M rows of a call as M / 16 calls of [16, n, k] on the same B
  // (M = 16: one canvas row block; 32: an expert's typical rows; 128: canvas 32 x batch 4).
  if (all || which == "invariant") {
    for (i64 m : {16, 32, 128}) {
      v.push_back({"invariant", "small: q/o proj", false, true, m, 512, 512, true});
      v.push_back({"invariant", "small: dense gate_up, LM head", false, true, m, 2048, 512, true});
      v.push_back({"invariant", "small: dense down, o proj (full)", false, true, m, 512, 1024, true});
      v.push_back({"invariant", "small: expert gate_up", false, false, m, 512, 512, true});
      v.push_back({"invariant", "small: expert down", false, false, m, 512, 256, true});
      v.push_back({"invariant", "tiny: q/o proj", false, true, m, 64, 64, true});
      v.push_back({"invariant", "tiny: LM head", false, true, m, 2048, 64, true});
    }
  }
  // Encoder prefill (batch 4 x prompt 128 = 512 rows) and SFT (up to 4096 rows): forward NT, backward dx
  // (NN, dy . W) and dW (TN, dy^T . x, the rows as the inner dimension).
  if (all || which == "large") {
    for (i64 m : {512, 4096}) {
      v.push_back({"prefill/sft", "small: q/o proj", false, true, m, 512, 512});
      v.push_back({"prefill/sft", "small: dense gate_up fwd", false, true, m, 2048, 512});
      v.push_back({"prefill/sft", "small: dense gate_up dx", false, false, m, 512, 2048});
      v.push_back({"prefill/sft", "small: dense gate_up dW", true, false, 2048, 512, m});
      v.push_back({"prefill/sft", "tiny: q/o proj", false, true, m, 64, 64});
      v.push_back({"prefill/sft", "tiny: LM head", false, true, m, 2048, 64});
    }
  }
  return v;
}

double median(std::vector<double> x) {
  std::sort(x.begin(), x.end());
  const std::size_t n = x.size();
  return n % 2 ? x[n / 2] : 0.5 * (x[n / 2 - 1] + x[n / 2]);
}

struct Result {
  const Shape* shape;
  int threads;
  std::string lib;
  double min_ms, median_ms, err;
};

// The key of a summary row: group, config (small / tiny), threads.
std::string summary_key(const Shape& s, int threads) {
  return s.group + " | " + s.what.substr(0, s.what.find(':')) + " | " + std::to_string(threads);
}

}  // namespace

int main(int argc, char** argv) {
  std::vector<int> thread_counts = {1, 2};
  int reps = 7;
  double block_ms = 10;
  std::string which = "all", csv_path, only;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    auto next = [&]() -> std::string {
      if (i + 1 >= argc) {
        std::fprintf(stderr, "%s needs a value\n", a.c_str());
        std::exit(2);
      }
      return argv[++i];
    };
    if (a == "--threads") {
      thread_counts.clear();
      const std::string s = next();
      for (std::size_t p = 0; p < s.size();) {
        const std::size_t q = s.find(',', p);
        thread_counts.push_back(std::stoi(s.substr(p, q - p)));
        p = q == std::string::npos ? s.size() : q + 1;
      }
    } else if (a == "--reps") reps = std::stoi(next());
    else if (a == "--block-ms") block_ms = std::stod(next());
    else if (a == "--shapes") which = next();
    else if (a == "--csv") csv_path = next();
    else if (a == "--libs") only = next();
    else {
      std::fprintf(stderr,
                   "usage: %s [--threads 1,2] [--reps 7] [--block-ms 10] [--shapes all|decode|invariant|large] "
                   "[--libs name,name] [--csv FILE]\n",
                   argv[0]);
      return a == "--help" ? 0 : 2;
    }
  }

  const std::string L = "/usr/lib/x86_64-linux-gnu/";
  std::vector<std::string> impls;
  std::vector<std::unique_ptr<Lib>> libs;
  libs.push_back(cblas_lib("OpenBLAS", L + "openblas-pthread/libopenblas.so.0", "openblas_set_num_threads", false));
  libs.push_back(cblas_lib("OpenBLAS-openmp", L + "openblas-openmp/libopenblas.so.0", "openblas_set_num_threads", false));
  if (libs.back()) libs.back()->tiled = false;  // the same kernels as OpenBLAS
  libs.push_back(cblas_lib("BLIS", L + "blis-openmp/libblis.so.4", "bli_thread_set_num_threads", true));
  libs.push_back(cblas_lib("ATLAS", L + "libcblas.so.3", nullptr, false));
  if (libs.back()) libs.back()->tiled = false;
  libs.push_back(onednn_sgemm());
  libs.push_back(onednn_matmul(Pack::none, &impls));
  libs.push_back(onednn_matmul(Pack::once, &impls));
  libs.push_back(onednn_matmul(Pack::per_call, &impls));
  libs.push_back(eigen_lib());
  libs.erase(std::remove(libs.begin(), libs.end(), nullptr), libs.end());
  if (!only.empty())
    libs.erase(std::remove_if(libs.begin(), libs.end(),
                              [&](const auto& l) { return ("," + only + ",").find("," + l->name + ",") == std::string::npos; }),
               libs.end());
  if (libs.empty()) return 2;
  std::printf("libraries (ratios are to %s):\n", libs[0]->name.c_str());
  for (const auto& l : libs)
    std::printf("  %-24s %s%s\n", l->name.c_str(), l->note.c_str(), l->single_thread_only ? " [1 thread only]" : "");
  std::printf("reps %d, blocks of about %.0f ms, threads", reps, block_ms);
  for (int t : thread_counts) std::printf(" %d", t);
  std::printf("\n");

  FILE* csv = csv_path.empty() ? nullptr : std::fopen(csv_path.c_str(), "w");
  if (csv)
    std::fprintf(csv, "group,what,op,m,n,k,tiles,threads,library,min_ms,median_ms,gflops_min,gflops_median,"
                      "ratio_min,ratio_median,max_rel_err\n");

  std::mt19937 rng(7);
  std::uniform_real_distribution<float> u(-1.f, 1.f);
  const std::vector<Shape> all_shapes = shapes(which);
  std::vector<Result> results;
  std::string header_for;

  for (int threads : thread_counts) {
    for (const auto& l : libs) l->set_threads(threads);
    for (const Shape& s : all_shapes) {
      std::vector<Lib*> used;
      for (const auto& l : libs)
        if ((s.tiles ? l->tiled : l->whole) && !(l->single_thread_only && threads != 1)) used.push_back(l.get());
      const std::string cols = [&] {
        std::string h = "\n| group | shape | op | M | N | K | threads |";
        for (Lib* l : used) h += " " + l->name + " |";
        h += "\n|---|---|---|---|---|---|---|";
        for (std::size_t i = 0; i < used.size(); ++i) h += "---|";
        return h;
      }();
      if (cols != header_for) {
        std::printf("%s\n", cols.c_str());
        header_for = cols;
      }
      std::vector<float> a(static_cast<std::size_t>(s.m * s.k)), b(static_cast<std::size_t>(s.k * s.n));
      for (float& x : a) x = u(rng);
      for (float& x : b) x = u(rng);
      // Reference in double; A is [m,k] (or [k,m] for TN), B is [k,n] (or [n,k] for NT).
      std::vector<double> ref(static_cast<std::size_t>(s.m * s.n), 0.0), scale(ref.size(), 0.0);
      for (i64 i = 0; i < s.m; ++i)
        for (i64 p = 0; p < s.k; ++p) {
          const double av = s.ta ? a[p * s.m + i] : a[i * s.k + p];
          for (i64 j = 0; j < s.n; ++j) {
            const double bv = s.tb ? b[j * s.k + p] : b[p * s.n + j];
            ref[i * s.n + j] += av * bv;
            scale[i * s.n + j] += std::abs(av * bv);
          }
        }
      struct Run {
        Lib* lib;
        std::function<void()> call;
        std::vector<float> c;
        int iters = 1;
        std::vector<double> t;
        double err = 0;
      };
      std::vector<Run> runs;
      runs.reserve(used.size());
      for (Lib* l : used) {
        runs.push_back({l, {}, std::vector<float>(static_cast<std::size_t>(s.m * s.n), 0.f), 1, {}, 0.0});
        Run& r = runs.back();
        r.call = l->prepare(s, a.data(), b.data(), r.c.data());
        // Warm-up and calibration: calls per block so that a block takes about block_ms.
        const auto t0 = std::chrono::steady_clock::now();
        int calls = 0;
        do {
          r.call();
          ++calls;
        } while (std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count() < block_ms / 2 ||
                 calls < 2);
        const double per = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count() / calls;
        r.iters = std::max(1, static_cast<int>(block_ms / per));
        for (std::size_t i = 0; i < ref.size(); ++i)
          r.err = std::max(r.err, std::abs(r.c[i] - ref[i]) / std::max(scale[i], 1e-30));
        quiesce();
      }
      for (int rep = 0; rep < reps; ++rep) {
        for (std::size_t j = 0; j < runs.size(); ++j) {
          Run& r = runs[(j + rep) % runs.size()];  // rotate the order each repetition
          const auto t0 = std::chrono::steady_clock::now();
          for (int i = 0; i < r.iters; ++i) r.call();
          r.t.push_back(std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count() / r.iters);
          quiesce();
        }
      }
      const double flops = 2.0 * s.m * s.n * s.k;
      const double base_min = *std::min_element(runs[0].t.begin(), runs[0].t.end()), base_med = median(runs[0].t);
      std::printf("| %s | %s | %s | %lld | %lld | %lld | %d |", s.group.c_str(), s.what.c_str(), s.op().c_str(),
                  static_cast<long long>(s.m), static_cast<long long>(s.n), static_cast<long long>(s.k), threads);
      for (const Run& r : runs) {
        const double med = median(r.t), mn = *std::min_element(r.t.begin(), r.t.end());
        results.push_back({&s, threads, r.lib->name, mn, med, r.err});
        const char* bad = r.err > 1e-5 ? " WRONG" : "";
        if (&r == &runs[0]) std::printf(" %.1f%s |", flops / mn * 1e-6, bad);
        else std::printf(" %.1f (%.2fx)%s |", flops / mn * 1e-6, base_min / mn, bad);
        if (csv)
          std::fprintf(csv, "%s,\"%s\",%s,%lld,%lld,%lld,%d,%d,%s,%.6f,%.6f,%.3f,%.3f,%.4f,%.4f,%.3g\n", s.group.c_str(),
                       s.what.c_str(), s.op().c_str(), static_cast<long long>(s.m), static_cast<long long>(s.n),
                       static_cast<long long>(s.k), s.tiles ? 1 : 0, threads, r.lib->name.c_str(), mn, med,
                       flops / mn * 1e-6, flops / med * 1e-6, base_min / mn, base_med / med, r.err);
      }
      std::printf("\n");
      std::fflush(stdout);
      if (csv) std::fflush(csv);
    }
  }
  std::printf("\nGFLOP/s from the best (min) time per call over the repetitions; (ratio) = %s's min time / the "
              "library's min time, > 1 = faster. WRONG = max relative error to a double reference above 1e-5.\n",
              libs[0]->name.c_str());

  // Summary: geometric mean over the shapes of each (group, config, threads) of the ratio to the first library,
  // from the min times and from the median times.
  std::printf("\nGeometric mean of the ratio to %s over the shapes of each row (min times / median times):\n\n",
              libs[0]->name.c_str());
  std::printf("| group | config | threads |");
  for (const auto& l : libs) std::printf(" %s |", l->name.c_str());
  std::printf("\n|---|---|---|");
  for (std::size_t i = 0; i < libs.size(); ++i) std::printf("---|");
  std::printf("\n");
  std::vector<std::string> keys;
  for (const Result& r : results)
    if (std::find(keys.begin(), keys.end(), summary_key(*r.shape, r.threads)) == keys.end())
      keys.push_back(summary_key(*r.shape, r.threads));
  for (const std::string& key : keys) {
    std::printf("| %s |", key.c_str());
    for (const auto& l : libs) {
      double lmin = 0, lmed = 0;
      int n = 0;
      for (const Result& r : results) {
        if (r.lib != l->name || summary_key(*r.shape, r.threads) != key) continue;
        const Result* base = nullptr;
        for (const Result& q : results)
          if (q.shape == r.shape && q.threads == r.threads && q.lib == libs[0]->name) base = &q;
        if (base == nullptr) continue;
        lmin += std::log(base->min_ms / r.min_ms);
        lmed += std::log(base->median_ms / r.median_ms);
        ++n;
      }
      if (n == 0) std::printf(" - |");
      else std::printf(" %.2fx / %.2fx |", std::exp(lmin / n), std::exp(lmed / n));
    }
    std::printf("\n");
  }

  std::sort(impls.begin(), impls.end());
  std::printf("\noneDNN matmul implementations chosen:");
  for (std::size_t i = 0; i < impls.size();) {
    std::size_t j = i;
    while (j < impls.size() && impls[j] == impls[i]) ++j;
    std::printf(" %s (%zu shapes)", impls[i].c_str(), j - i);
    i = j;
  }
  std::printf("\n");
  if (csv) std::fclose(csv);
  return 0;
}
