// Fuzz target: INI job files (app/cli.h parse_job_args with --config, i.e. boost::program_options'
// parse_config_file with each job's options, the duplicate-option check and the resolved-configuration
// text). The input is the job file; it is parsed once for every job of the registry (jobs/registry.cpp),
// so the seeds can be real job files of any job.
//
// Known bug (docs/fuzzing.md, fuzz/crashes/job_ini/): a value or an option name holding a boost
// placeholder such as %value% or %canonical_option% makes the boost::program_options error's what() loop
// forever. With DGEMMA_FUZZ_SKIP_KNOWN=1 such inputs are skipped, so that a run can find other bugs.
#include <cctype>
#include <string>
#include <string_view>
#include <vector>

#include "app/cli.h"
#include "fuzz/targets/fuzz_util.h"

using namespace dg;

namespace {
// "%name%" with name made of letters and underscores: the placeholders boost's error messages substitute.
bool has_boost_placeholder(std::string_view s) {
  for (std::size_t i = s.find('%'); i != std::string_view::npos; i = s.find('%', i + 1)) {
    std::size_t j = i + 1;
    while (j < s.size() && (std::isalpha(static_cast<unsigned char>(s[j])) || s[j] == '_')) ++j;
    if (j > i + 1 && j < s.size() && s[j] == '%') return true;
  }
  return false;
}

bool skip_known() {
  static const bool v = [] {
    const char* s = std::getenv("DGEMMA_FUZZ_SKIP_KNOWN");
    return s && *s && std::string_view(s) != "0";
  }();
  return v;
}
}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  if (skip_known() && has_boost_placeholder({reinterpret_cast<const char*>(data), size})) return 0;
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
