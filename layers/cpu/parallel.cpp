// parallel_for's team (layers/cpu/parallel.h): a small pool of cpu_threads() - 1 workers plus the calling
// thread, and the optional per-loop profile (DGEMMA_LOOP_PROFILE=1: calls, threaded calls and time of every
// named loop, printed to stderr at exit).
//
// A loop is cut into kBlocksPerThread blocks per thread, [n·b/B, n·(b+1)/B); the blocks are claimed from an
// atomic counter by whichever threads are running, the caller included, so a worker the OS has not
// scheduled yet never holds the caller up: the caller waits only for blocks already claimed. (Which thread
// runs a block does not matter for the results: items write disjoint outputs.) Idle workers spin briefly,
// then sleep on a futex, so that they do not take a core from OpenBLAS's threads between loops.
// Not OpenMP: libgomp's team ends every loop with a barrier, which waits for any thread the OS descheduled
// (on the shared 2-core machine the tiny model's SFT step took 12x longer at 2 threads than at 1 that way,
// docs/performance.md), and its idle workers spin for milliseconds against OpenBLAS's.
#include "layers/cpu/parallel.h"

#include <linux/futex.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <climits>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "layers/ops.h"

namespace dg::cpu {

namespace {

// Below this much work (items x cost, in element operations: some microseconds) a loop runs inline:
// waking the workers would cost more than it saves.
std::atomic<std::int64_t> g_min_parallel_work{16384};

thread_local bool t_in_loop = false;  // inside a block (or a worker): nested loops run inline

inline void cpu_relax() {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#endif
}

// Sleeps while *word == expected (a futex; spurious returns are fine), and wakes every sleeper on word.
// (Not std::atomic::wait: GCC 12's can miss a notification.)
void futex_wait(std::atomic<std::uint32_t>& word, std::uint32_t expected) {
  syscall(SYS_futex, reinterpret_cast<std::uint32_t*>(&word), FUTEX_WAIT_PRIVATE, expected, nullptr, nullptr, 0);
}
void futex_wake_all(std::atomic<std::uint32_t>& word) {
  syscall(SYS_futex, reinterpret_cast<std::uint32_t*>(&word), FUTEX_WAKE_PRIVATE, INT32_MAX, nullptr, nullptr, 0);
}

class Pool {
 public:
  explicit Pool(int threads) : blocks_(threads * kBlocksPerThread), errors_(static_cast<std::size_t>(blocks_)) {
    for (int i = 1; i < threads; ++i) workers_.emplace_back([this] { work(); });
  }
  ~Pool() {
    stop_.store(true);
    wake();
    for (std::thread& t : workers_) t.join();
  }
  int threads() const { return static_cast<int>(workers_.size()) + 1; }

  // fn over [0, n) in blocks; returns after every block ran; rethrows the lowest block's exception.
  void run(std::int64_t n, RangeFn fn) {
    const int blocks = blocks_;
    n_ = n;
    fn_ = &fn;
    done_.store(0, std::memory_order_relaxed);
    next_.store(0, std::memory_order_release);  // the blocks become claimable: n_ and fn_ are published
    wake();
    claim_blocks();
    for (int spin = 0; done_.load(std::memory_order_acquire) < blocks; ++spin)
      if (spin < kSpins)
        cpu_relax();
      else
        std::this_thread::yield();  // a worker holding a block was descheduled
    std::exception_ptr first;
    for (std::exception_ptr& e : errors_)
      if (e && !first) first = e;
    std::fill(errors_.begin(), errors_.end(), nullptr);
    if (first) std::rethrow_exception(first);
  }

 private:
  // A new epoch: spinning workers see it, sleeping ones are woken. (seq_cst with the sleepers count: either
  // a worker about to sleep sees the new epoch, or this sees the worker among the sleepers.)
  void wake() {
    epoch_.fetch_add(1);
    if (sleepers_.load() > 0) futex_wake_all(epoch_);
  }

  int claim() { return next_.fetch_add(1, std::memory_order_acq_rel); }

  // Runs blocks until none is left unclaimed.
  void claim_blocks() {
    const int blocks = blocks_;
    for (int b = claim(); b < blocks; b = claim()) {
      try {
        const std::int64_t begin = n_ * b / blocks, end = n_ * (b + 1) / blocks;
        if (begin < end) (*fn_)(begin, end);
      } catch (...) {
        errors_[static_cast<std::size_t>(b)] = std::current_exception();
      }
      done_.fetch_add(1, std::memory_order_release);
    }
  }

  void work() {
    t_in_loop = true;
    std::uint32_t seen = 0;  // the epoch at construction (a thread may start after loops already ran)
    for (;;) {
      for (int spin = 0; epoch_.load(std::memory_order_acquire) == seen; ++spin) {
        if (spin < kSpins) {
          cpu_relax();
          continue;
        }
        sleepers_.fetch_add(1);
        if (epoch_.load() == seen) futex_wait(epoch_, seen);
        sleepers_.fetch_sub(1);
      }
      seen = epoch_.load();
      if (stop_.load()) return;
      claim_blocks();
    }
  }

  static constexpr int kBlocksPerThread = 4;  // claimed dynamically: a late thread's share goes to the others
  static constexpr int kSpins = 2000;  // pause instructions (tens of microseconds) before a worker sleeps
  const int blocks_;  // per loop, whatever its size (empty blocks are skipped)
  std::vector<std::thread> workers_;
  std::vector<std::exception_ptr> errors_;  // per block
  std::atomic<std::uint32_t> epoch_{0};
  std::atomic<int> next_{0}, done_{0}, sleepers_{0};
  std::atomic<bool> stop_{false};
  std::int64_t n_ = 0;
  const RangeFn* fn_ = nullptr;
};

// The pool of the current thread count (rebuilt when it changes; only the job's main thread runs loops).
Pool& pool(int threads) {
  static std::unique_ptr<Pool> p;
  if (!p || p->threads() != threads) {
    p.reset();
    p = std::make_unique<Pool>(threads);
  }
  return *p;
}

class LoopProfile {
 public:
  static LoopProfile& get() {
    static LoopProfile p;
    return p;
  }
  bool on() const { return on_; }
  void add(const char* name, std::int64_t items, bool threaded, double seconds) {
    std::lock_guard<std::mutex> lock(mu_);
    Stats& s = stats_[name];
    ++s.calls;
    s.threaded += threaded ? 1 : 0;
    s.items += items;
    s.seconds += seconds;
  }
  ~LoopProfile() {
    if (!on_ || stats_.empty()) return;
    std::vector<std::pair<std::string, Stats>> rows(stats_.begin(), stats_.end());
    std::sort(rows.begin(), rows.end(),
              [](const auto& a, const auto& b) { return a.second.seconds > b.second.seconds; });
    std::fprintf(stderr, "dgemma loop profile:\n%-34s %10s %10s %14s %12s\n", "loop", "calls", "threaded", "items",
                 "ms");
    for (const auto& [name, s] : rows)
      std::fprintf(stderr, "%-34s %10lld %10lld %14lld %12.3f\n", name.c_str(), static_cast<long long>(s.calls),
                   static_cast<long long>(s.threaded), static_cast<long long>(s.items), s.seconds * 1e3);
  }

 private:
  struct Stats {
    std::int64_t calls = 0, threaded = 0, items = 0;
    double seconds = 0;
  };
  LoopProfile() {
    const char* env = std::getenv("DGEMMA_LOOP_PROFILE");
    on_ = env != nullptr && std::string(env) != "0" && std::string(env) != "";
  }
  bool on_ = false;
  std::mutex mu_;
  std::map<std::string, Stats> stats_;
};

// The pool serves one loop at a time: a loop another thread starts meanwhile runs inline.
void run_threaded(std::int64_t n, int threads, RangeFn fn) {
  static std::mutex one_caller;
  std::unique_lock<std::mutex> lock(one_caller, std::try_to_lock);
  if (!lock) return fn(0, n);
  struct InLoop {
    InLoop() { t_in_loop = true; }
    ~InLoop() { t_in_loop = false; }
  } in_loop;
  pool(threads).run(n, fn);
}

}  // namespace

int loop_threads(std::int64_t n, std::int64_t cost) {
  const int threads = cpu_threads();
  if (threads <= 1 || n <= 1 || t_in_loop) return 1;
  if (n * std::max<std::int64_t>(cost, 1) < g_min_parallel_work.load(std::memory_order_relaxed)) return 1;
  return threads;
}

std::int64_t set_min_parallel_work(std::int64_t work) {
  return g_min_parallel_work.exchange(std::max<std::int64_t>(work, 1));
}

void parallel_ranges(const char* name, std::int64_t n, std::int64_t cost, RangeFn fn) {
  if (n <= 0) return;
  const int threads = loop_threads(n, cost);
  LoopProfile& profile = LoopProfile::get();
  const auto t0 = profile.on() ? std::chrono::steady_clock::now() : std::chrono::steady_clock::time_point{};
  if (threads == 1)
    fn(0, n);
  else
    run_threaded(n, threads, fn);
  if (profile.on())
    profile.add(name, n, threads > 1, std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
}

}  // namespace dg::cpu
