// Comm: the collectives dgemma needs, over one group of ranks. MpiComm moves host buffers (the CPU
// backend; Debian's Open MPI is not CUDA-aware), NcclComm moves device buffers (the CUDA backend).
// Counts are in elements of the given dtype. Every rank of the group must make the same calls in
// the same order. MPI calls complete before they return; NCCL calls are enqueued on the comm's
// stream (call synchronize() before reading results on the host).
#pragma once
#include <cstddef>
#include <functional>
#include <string>
#include <memory>
#include <vector>

#include "layers/tensor.h"

namespace dg {

enum class ReduceOp { Sum, Max, Min };

// A collective in flight (the non-blocking forms below). wait() completes it; the destructor waits too.
class PendingCollective {
 public:
  virtual ~PendingCollective() = default;
  virtual void wait() = 0;
};

class Comm {
 public:
  virtual ~Comm() = default;
  virtual int rank() const = 0;
  virtual int size() const = 0;
  virtual Device device() const = 0;  // where the buffers passed to this comm live

  // recv[size * count] = concatenation of every rank's send[count], in rank order.
  virtual void all_gather(const void* send, void* recv, std::size_t count, DType t) = 0;
  // send[size * count]; rank r receives into recv[count] the reduction of everyone's block r.
  virtual void reduce_scatter(const void* send, void* recv, std::size_t count, DType t, ReduceOp op) = 0;
  // recv[count] = reduction of everyone's send[count]; send == recv is allowed (in place).
  virtual void all_reduce(const void* send, void* recv, std::size_t count, DType t, ReduceOp op) = 0;
  // Rank r sends send[send_displs[p] .. + send_counts[p]) to each rank p and receives from rank p into
  // recv[recv_displs[p] .. + recv_counts[p]). Counts may be zero. Arrays have size() entries.
  virtual void all_to_all_v(const void* send, const std::size_t* send_counts, const std::size_t* send_displs,
                            void* recv, const std::size_t* recv_counts, const std::size_t* recv_displs,
                            DType t) = 0;
  virtual void broadcast(void* buf, std::size_t count, DType t, int root) = 0;
  // Non-blocking forms: the call returns at once; buffers must stay untouched until wait(). The default
  // runs the blocking collective (NCCL calls are asynchronous on the comm's stream anyway).
  virtual std::unique_ptr<PendingCollective> all_gather_async(const void* send, void* recv, std::size_t count, DType t);
  virtual std::unique_ptr<PendingCollective> reduce_scatter_async(const void* send, void* recv, std::size_t count,
                                                                  DType t, ReduceOp op);
  virtual void barrier() = 0;
  // A barrier for a rank that has nothing to do until the others arrive (a rank done with its share of
  // the files, waiting for the rest): it waits without spinning a core, so the ranks still working keep
  // the CPU. MPI polls a non-blocking barrier with a short sleep in between (latency ~1 ms, which only
  // matters for waits that are short anyway); the default is barrier().
  virtual void idle_barrier() { barrier(); }
  virtual void synchronize() {}  // wait for enqueued device work (no-op for MPI)
  // Sub-group of the ranks that pass the same color, ordered by key (then by rank).
  virtual std::unique_ptr<Comm> split(int color, int key) = 0;
};

// Tensor forms of the collectives: check dtypes, devices and sizes, then call the raw form.
void all_gather(Comm& c, const Tensor& send, Tensor& recv);                    // recv.numel == size * send.numel
void reduce_scatter(Comm& c, const Tensor& send, Tensor& recv, ReduceOp op = ReduceOp::Sum);
void all_reduce(Comm& c, Tensor& buf, ReduceOp op = ReduceOp::Sum);             // in place
void broadcast(Comm& c, Tensor& buf, int root);

// The world communicator on host buffers (MPI must be initialised).
std::unique_ptr<Comm> mpi_world();
// An NCCL communicator over the same ranks as `host` (bootstrapped through it); each rank must have
// selected its device first. Throws dg::Error in a build without CUDA.
std::unique_ptr<Comm> make_nccl_comm(Comm& host);

// One agreement over `c` (an all-reduce of MAX): true on every rank when any rank's flag is set.
bool any_rank(Comm& c, bool flag);

// Runs fn on every rank of `c`; if it threw anywhere, every rank throws the lowest failing rank's error
// (a ConfigError stays one), so that all ranks leave a collective operation together.
void agree(Comm& c, const std::function<void()>& fn);
// The same for an fn that may run long on some ranks (file writes): a rank done early waits in an idle
// barrier (Comm::idle_barrier, no spinning) before the agreement.
void agree_idle(Comm& c, const std::function<void()>& fn);
// Every rank's string, on `root` (empty elsewhere).
std::vector<std::string> gather_strings(Comm& c, const std::string& mine, int root);

}  // namespace dg
