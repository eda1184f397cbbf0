// dgemma: DiffusionGemma fine-tuning, checkpoint conversion and batch generation.
#include "app/cli.h"
#include "app/runtime.h"

namespace {
// Installed while the program's static objects are set up, before main and before anything slow.
const bool handlers_installed = (dg::install_stop_signal_handlers(), true);
}  // namespace

int main(int argc, char** argv) {
  // First thing: a SIGUSR1/SIGTERM that arrives while the job is still starting (MPI start-up, model
  // loading) is kept as a stop request instead of killing the process.
  (void)handlers_installed;
  dg::install_stop_signal_handlers();
  return dg::run_cli(argc, argv);
}
