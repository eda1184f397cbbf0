// Process exit codes of `dgemma`, documented in README.md and `dgemma --help`.
#pragma once

namespace dg {

enum ExitCode : int {
  kExitOk = 0,               // the job finished
  kExitRuntimeError = 1,     // something failed while running (I/O, numerics, communication, ...)
  kExitUsageError = 2,       // bad command line, job file, input file or model configuration
  kExitStoppedOnSignal = 42  // SIGUSR1/SIGTERM: the job checkpointed and stopped; requeue and --resume
};

}  // namespace dg
