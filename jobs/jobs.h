// The job table: every `dgemma <job>` with its summary, its options and its driver. A job that is not
// built yet has no driver; the command line still knows it and says so.
#pragma once
#include <boost/program_options.hpp>
#include <span>
#include <string>
#include <string_view>

#include <functional>

#include "parallel/comm.h"

namespace dg {

namespace po = boost::program_options;

// What a job is given of the process it runs in (app/ starts MPI, picks the device and installs the
// signal handlers, then fills this in): jobs never reach back into app/.
struct JobEnv {
  Comm* world = nullptr;  // host comm over all ranks
  int rank = 0;
  int node_id = 0;        // shared by the ranks of one node
  int cuda_device = -1;   // selected device ordinal, -1 on the CPU
  std::function<bool()> stop_requested;  // collective: true on every rank once any rank was signalled
  int local_size = 1;     // ranks on this node (their share of its cores: --threads)
};

struct JobContext {
  JobEnv rt;
  const po::variables_map& vm;
  std::string resolved_config;  // INI text of every option with its value; jobs save it with outputs
};

struct Job {
  std::string_view name;
  std::string_view summary;
  std::string_view details;                  // extra text for `dgemma <job> --help`
  void (*add_options)(po::options_description&);  // nullptr: no job-specific options
  int (*run)(JobContext&);                   // nullptr: not built yet
  bool uses_gpu;                             // pick a GPU at start-up when one is present
};

std::span<const Job> all_jobs();
const Job* find_job(std::string_view name);

// One pair per built job (jobs/<job>.cpp).
void bench_options(po::options_description& d);
int bench_run(JobContext& ctx);
void init_options(po::options_description& d);
int init_run(JobContext& ctx);
void convert_options(po::options_description& d);
int convert_run(JobContext& ctx);
void sft_options(po::options_description& d);
int sft_run(JobContext& ctx);
void generate_options(po::options_description& d);
int generate_run(JobContext& ctx);
void inspect_options(po::options_description& d);
int inspect_run(JobContext& ctx);

}  // namespace dg
