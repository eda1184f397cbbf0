// Fuzz target: INI job files (app/cli.h parse_job_args with --config, i.e. boost::program_options'
// parse_config_file with each job's options, the duplicate-option check and the resolved-configuration
// text). The input is the job file; it is parsed once for every job of the registry (jobs/registry.cpp),
// so the seeds can be real job files of any job.
//
// Found here: a value or an option name holding one of boost's placeholders (%value%,
// %canonical_option%) hung boost's error formatting in what(); app/cli.cpp now formats option errors
// itself (po_what). The inputs are fuzz/corpus/job_ini/regress-timeout-*.ini.
#include <string>
#include <vector>

#include "app/cli.h"
#include "fuzz/targets/fuzz_util.h"

using namespace dg;

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::string path = fuzz::write_scratch(".ini", data, size);
  for (const Job& job : all_jobs()) {
    fuzz::run_guarded([&] {
      const ParsedJob p = parse_job_args(job, {"--config", path});
      if (p.job != &job || p.help) fuzz::invariant_failed("parse_job_args result");
      if (p.resolved.empty()) fuzz::invariant_failed("no resolved configuration text");
    });
  }
  return 0;
}
