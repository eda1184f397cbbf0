// MpiComm: collectives over host buffers with MPI.
#include <mpi.h>

#include <algorithm>
#include <chrono>
#include <climits>
#include <thread>

#include "parallel/comm.h"

namespace dg {

namespace {

MPI_Datatype mpi_type(DType t, bool reducing) {
  switch (t) {
    case DType::F32: return MPI_FLOAT;
    case DType::I32: return MPI_INT32_T;
    case DType::I64: return MPI_INT64_T;
    case DType::BF16:
    case DType::F16:
      if (reducing) fail("MPI reductions of {} are not supported (the CPU backend reduces f32)", dtype_name(t));
      return MPI_UINT16_T;
  }
  return MPI_BYTE;
}

MPI_Op mpi_op(ReduceOp op) {
  switch (op) {
    case ReduceOp::Sum: return MPI_SUM;
    case ReduceOp::Max: return MPI_MAX;
    case ReduceOp::Min: return MPI_MIN;
  }
  return MPI_SUM;
}

int checked_count(std::size_t n, const char* what) {
  if (n > static_cast<std::size_t>(INT_MAX))
    fail("MPI {} of {} elements exceeds the 2^31-1 element limit of one MPI call", what, n);
  return static_cast<int>(n);
}

void check_mpi(int rc, const char* what) {
  if (rc != MPI_SUCCESS) {
    char msg[MPI_MAX_ERROR_STRING];
    int len = 0;
    MPI_Error_string(rc, msg, &len);
    fail("MPI_{} failed: {}", what, std::string(msg, static_cast<std::size_t>(len)));
  }
}

class MpiRequest final : public PendingCollective {
 public:
  explicit MpiRequest(MPI_Request r) : req_(r) {}
  ~MpiRequest() override {
    if (req_ != MPI_REQUEST_NULL) MPI_Wait(&req_, MPI_STATUS_IGNORE);
  }
  void wait() override {
    if (req_ != MPI_REQUEST_NULL) check_mpi(MPI_Wait(&req_, MPI_STATUS_IGNORE), "Wait");
  }

 private:
  MPI_Request req_;
};

class MpiComm final : public Comm {
 public:
  MpiComm(MPI_Comm c, bool owned) : comm_(c), owned_(owned) {
    MPI_Comm_rank(comm_, &rank_);
    MPI_Comm_size(comm_, &size_);
  }
  ~MpiComm() override {
    int finalized = 0;
    MPI_Finalized(&finalized);
    if (owned_ && !finalized) MPI_Comm_free(&comm_);
  }
  int rank() const override { return rank_; }
  int size() const override { return size_; }
  Device device() const override { return Device::CPU; }

  void all_gather(const void* send, void* recv, std::size_t count, DType t) override {
    const int n = checked_count(count, "all_gather");
    check_mpi(MPI_Allgather(send, n, mpi_type(t, false), recv, n, mpi_type(t, false), comm_), "Allgather");
  }
  void reduce_scatter(const void* send, void* recv, std::size_t count, DType t, ReduceOp op) override {
    const int n = checked_count(count, "reduce_scatter");
    check_mpi(MPI_Reduce_scatter_block(send, recv, n, mpi_type(t, true), mpi_op(op), comm_), "Reduce_scatter_block");
  }
  void all_reduce(const void* send, void* recv, std::size_t count, DType t, ReduceOp op) override {
    const int n = checked_count(count, "all_reduce");
    check_mpi(MPI_Allreduce(send == recv ? MPI_IN_PLACE : send, recv, n, mpi_type(t, true), mpi_op(op), comm_),
              "Allreduce");
  }
  void all_to_all_v(const void* send, const std::size_t* sc, const std::size_t* sd, void* recv,
                    const std::size_t* rc, const std::size_t* rd, DType t) override {
    std::vector<int> isc(size_), isd(size_), irc(size_), ird(size_);
    for (int p = 0; p < size_; ++p) {
      isc[p] = checked_count(sc[p], "all_to_all_v");
      isd[p] = checked_count(sd[p], "all_to_all_v");
      irc[p] = checked_count(rc[p], "all_to_all_v");
      ird[p] = checked_count(rd[p], "all_to_all_v");
    }
    check_mpi(MPI_Alltoallv(send, isc.data(), isd.data(), mpi_type(t, false), recv, irc.data(), ird.data(),
                            mpi_type(t, false), comm_),
              "Alltoallv");
  }
  std::unique_ptr<PendingCollective> all_gather_async(const void* send, void* recv, std::size_t count,
                                                      DType t) override {
    const int n = checked_count(count, "all_gather");
    MPI_Request r = MPI_REQUEST_NULL;
    check_mpi(MPI_Iallgather(send, n, mpi_type(t, false), recv, n, mpi_type(t, false), comm_, &r), "Iallgather");
    return std::make_unique<MpiRequest>(r);
  }
  std::unique_ptr<PendingCollective> reduce_scatter_async(const void* send, void* recv, std::size_t count, DType t,
                                                          ReduceOp op) override {
    const int n = checked_count(count, "reduce_scatter");
    MPI_Request r = MPI_REQUEST_NULL;
    check_mpi(MPI_Ireduce_scatter_block(send, recv, n, mpi_type(t, true), mpi_op(op), comm_, &r),
              "Ireduce_scatter_block");
    return std::make_unique<MpiRequest>(r);
  }
  void broadcast(void* buf, std::size_t count, DType t, int root) override {
    check_mpi(MPI_Bcast(buf, checked_count(count, "broadcast"), mpi_type(t, false), root, comm_), "Bcast");
  }
  void barrier() override { check_mpi(MPI_Barrier(comm_), "Barrier"); }
  void idle_barrier() override {
    MPI_Request r = MPI_REQUEST_NULL;
    check_mpi(MPI_Ibarrier(comm_, &r), "Ibarrier");
    int done = 0;
    // MPI_Test drives the progress engine once; between tests the thread sleeps (50 us, growing to 2 ms)
    // instead of spinning in MPI_Wait as Open MPI does.
    for (auto pause = std::chrono::microseconds(50);; pause = std::min(2 * pause, std::chrono::microseconds(2000))) {
      check_mpi(MPI_Test(&r, &done, MPI_STATUS_IGNORE), "Test");
      if (done) return;
      std::this_thread::sleep_for(pause);
    }
  }
  std::unique_ptr<Comm> split(int color, int key) override {
    MPI_Comm sub = MPI_COMM_NULL;
    check_mpi(MPI_Comm_split(comm_, color, key, &sub), "Comm_split");
    return std::make_unique<MpiComm>(sub, true);
  }

 private:
  MPI_Comm comm_;
  bool owned_;
  int rank_ = 0, size_ = 1;
};

}  // namespace

std::unique_ptr<Comm> mpi_world() {
  int initialized = 0;
  MPI_Initialized(&initialized);
  DG_CHECK(initialized, "mpi_world() before MPI_Init");
  return std::make_unique<MpiComm>(MPI_COMM_WORLD, false);
}

}  // namespace dg
