// Threading of the CPU backend's non-GEMM ops (CPU-internal, not part of the op interface).
//
// parallel_for("group.loop", n, cost, fn) runs fn(i) for every i in [0, n) on cpu_threads() threads
// (the one count `--threads` sets, layers/ops.h; OpenBLAS uses the same for the GEMMs): the calling thread
// and a small pool (parallel.cpp), in contiguous blocks of i. Every loop is named: DGEMMA_LOOP_PROFILE=1
// prints each name's calls, threaded calls and time at exit.
//
// The rules every loop body follows, which make an op's result the same bits for every thread count:
//  - item i writes only outputs that belong to i (a row, a head, an expert, a column); no item reads what
//    another item writes;
//  - a reduction over items is never split: a loop either runs over the reduction's outputs (each summing
//    its inputs in the serial order), or fixes its blocks independently of the thread count and combines
//    their partial sums in block order (parallel_sum);
//  - no body calls BLAS (cpu::sgemm, gemm): OpenBLAS runs its own threads, and a GEMM inside a parallel
//    loop would oversubscribe the cores. An op that mixes GEMMs and row work runs the GEMMs between its
//    parallel loops.
// `cost` is the rough work of one item in element operations: loops whose total work is too small to
// repay waking the threads (or with one item, or one thread) run inline, with the same results.
// An exception thrown by a body is rethrown after the loop (the first block's, as the serial loop would).
#pragma once
#include <algorithm>
#include <cstdint>
#include <type_traits>
#include <utility>
#include <vector>

namespace dg::cpu {

// A non-owning reference to a callable taking (begin, end): the body of one thread's block.
class RangeFn {
 public:
  template <class F, class = std::enable_if_t<!std::is_same_v<std::decay_t<F>, RangeFn>>>
  RangeFn(F&& f)  // NOLINT: implicit, so that a lambda can be passed as is (it outlives the call)
      : obj_(const_cast<void*>(static_cast<const void*>(&f))),
        call_([](void* o, std::int64_t b, std::int64_t e) { (*static_cast<std::remove_reference_t<F>*>(o))(b, e); }) {}
  void operator()(std::int64_t begin, std::int64_t end) const { call_(obj_, begin, end); }

 private:
  void* obj_;
  void (*call_)(void*, std::int64_t, std::int64_t);
};

// Threads a loop of n items of `cost` each would use: 1 (run inline) or cpu_threads().
int loop_threads(std::int64_t n, std::int64_t cost);

// The least work (items x cost) a loop needs to run threaded; returns the previous value. Tests lower it
// to 1 so that every loop of two or more items runs on the threads.
std::int64_t set_min_parallel_work(std::int64_t work);

// fn(begin, end) for contiguous blocks covering [0, n), one per thread.
void parallel_ranges(const char* name, std::int64_t n, std::int64_t cost, RangeFn fn);

template <class F>
void parallel_for(const char* name, std::int64_t n, std::int64_t cost, F&& fn) {
  auto block = [&fn](std::int64_t begin, std::int64_t end) {
    for (std::int64_t i = begin; i < end; ++i) fn(i);
  };
  parallel_ranges(name, n, cost, block);
}

// Σ over i in [0, n) of term(i) (double), in blocks of kSumBlock items whatever the thread count: each
// block summed in order, the block sums added in block order. For n <= kSumBlock it is the serial sum.
constexpr std::int64_t kSumBlock = 16384;

template <class Term>
double parallel_sum(const char* name, std::int64_t n, std::int64_t cost, Term&& term) {
  const std::int64_t blocks = (n + kSumBlock - 1) / kSumBlock;
  if (blocks <= 1) {
    double s = 0;
    for (std::int64_t i = 0; i < n; ++i) s += term(i);
    return s;
  }
  std::vector<double> partial(static_cast<std::size_t>(blocks));
  parallel_for(name, blocks, kSumBlock * cost, [&](std::int64_t b) {
    double s = 0;
    for (std::int64_t i = b * kSumBlock, e = std::min(n, (b + 1) * kSumBlock); i < e; ++i) s += term(i);
    partial[static_cast<std::size_t>(b)] = s;
  });
  double s = 0;
  for (const double p : partial) s += p;
  return s;
}

}  // namespace dg::cpu
