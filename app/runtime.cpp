#include "app/runtime.h"

#include <mpi.h>

#include <csignal>
#include <cstdlib>

#include "io/checkpoint.h"
#include "jobs/log.h"
#include "layers/device.h"

namespace dg {

namespace {

volatile std::sig_atomic_t g_stop = 0;

extern "C" void on_stop_signal(int) { g_stop = 1; }

}  // namespace

void install_stop_signal_handlers() {
  struct sigaction sa {};
  sa.sa_handler = on_stop_signal;
  sigemptyset(&sa.sa_mask);
  sa.sa_flags = SA_RESTART;
  sigaction(SIGUSR1, &sa, nullptr);
  sigaction(SIGTERM, &sa, nullptr);
}

bool local_stop_signal() { return g_stop != 0; }
void raise_stop_signal_for_test() { std::raise(SIGUSR1); }

bool Runtime::stop_requested() { return any_rank(*world, local_stop_signal()); }

Runtime start_runtime(int* argc, char*** argv, bool use_gpu) {
  int initialized = 0;
  MPI_Initialized(&initialized);
  if (!initialized) {
    int provided = 0;
    MPI_Init_thread(argc, argv, MPI_THREAD_FUNNELED, &provided);
  }
  Runtime rt;
  MPI_Comm_rank(MPI_COMM_WORLD, &rt.rank);
  MPI_Comm_size(MPI_COMM_WORLD, &rt.size);
  MPI_Comm node = MPI_COMM_NULL;
  MPI_Comm_split_type(MPI_COMM_WORLD, MPI_COMM_TYPE_SHARED, rt.rank, MPI_INFO_NULL, &node);
  MPI_Comm_rank(node, &rt.local_rank);
  MPI_Comm_size(node, &rt.local_size);
  rt.node_id = rt.rank;  // the world rank of the node's first rank
  MPI_Bcast(&rt.node_id, 1, MPI_INT, 0, node);
  MPI_Comm_free(&node);
  int leader = rt.local_rank == 0 ? 1 : 0;
  MPI_Allreduce(&leader, &rt.nodes, 1, MPI_INT, MPI_SUM, MPI_COMM_WORLD);
  rt.world = mpi_world();
  log::set_rank(rt.rank);

  const int devices = use_gpu ? cuda_device_count() : 0;
  if (devices > 0) {
    rt.cuda_device = rt.local_rank % devices;
    cuda_set_device(rt.cuda_device);
    rt.device_description = fmt::format("cuda:{} {}", rt.cuda_device, cuda_device_description(rt.cuda_device));
  } else {
    rt.device_description = cuda_built() && use_gpu ? "cpu (no usable CUDA device)" : "cpu";
  }
  install_stop_signal_handlers();
  return rt;
}

void finish_runtime(Runtime& rt) {
  rt.world.reset();
  close_checkpoint_library();
  int finalized = 0;
  MPI_Finalized(&finalized);
  if (!finalized) MPI_Finalize();
}

void abort_all(int code) {
  int initialized = 0, finalized = 0, size = 1;
  MPI_Initialized(&initialized);
  MPI_Finalized(&finalized);
  if (initialized && !finalized) MPI_Comm_size(MPI_COMM_WORLD, &size);
  if (size > 1) MPI_Abort(MPI_COMM_WORLD, code);
  if (initialized && !finalized) MPI_Finalize();
  std::exit(code);
}

}  // namespace dg
