// dgemma: DiffusionGemma fine-tuning, checkpoint conversion and batch generation.
#include "app/cli.h"
#include "app/runtime.h"

int main(int argc, char** argv) {
  // First thing: a SIGUSR1/SIGTERM that arrives while the job is still starting (MPI start-up, model
  // loading) is kept as a stop request instead of killing the process.
  dg::install_stop_signal_handlers();
  return dg::run_cli(argc, argv);
}
