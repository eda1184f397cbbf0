#include "app/cli.h"

#include <fmt/ranges.h>

#include <cstdint>
#include <cstdlib>
#include <fstream>
#include <map>
#include <set>
#include <sstream>

#include "app/runtime.h"
#include "jobs/exit_codes.h"
#include "jobs/log.h"

namespace dg {

namespace {

po::options_description common_options() {
  po::options_description d("Common options");
  d.add_options()
      ("help,h", "print this help and exit")
      ("config,c", po::value<std::string>()->value_name("FILE"),
       "INI job file with any of the options below (key = value, [section] for dotted names); "
       "command-line options override it");
  return d;
}

po::options_description job_options(const Job& job) {
  po::options_description d(fmt::format("Options of `dgemma {}`", job.name), 100, 50);
  if (job.add_options) job.add_options(d);
  return d;
}

// Value of one option as text, for the resolved configuration.
std::string value_text(const boost::any& v) {
  if (v.empty()) return "";
  if (auto p = boost::any_cast<std::string>(&v)) return *p;
  if (auto p = boost::any_cast<bool>(&v)) return *p ? "true" : "false";
  if (auto p = boost::any_cast<int>(&v)) return std::to_string(*p);
  if (auto p = boost::any_cast<std::int64_t>(&v)) return std::to_string(*p);
  if (auto p = boost::any_cast<unsigned>(&v)) return std::to_string(*p);
  if (auto p = boost::any_cast<std::uint64_t>(&v)) return std::to_string(*p);
  if (auto p = boost::any_cast<double>(&v)) return fmt::format("{}", *p);
  if (auto p = boost::any_cast<float>(&v)) return fmt::format("{}", *p);
  if (auto p = boost::any_cast<std::vector<std::string>>(&v)) return fmt::format("{}", fmt::join(*p, " "));
  return "<value>";
}

// boost formats an error by replacing %placeholders% in its template until none is left, which never ends
// when the user's own text contains one (a value "%value%" hangs the job in what()): substitute once, left
// to right, from boost's own substitution table.
struct BoostErrorPeek : po::error_with_option_name {
  static constexpr auto substitutions = &BoostErrorPeek::m_substitutions;  // a member of the base
};

std::string po_what(const po::error& e) {
  const auto* named = dynamic_cast<const po::error_with_option_name*>(&e);
  if (named == nullptr) return e.what();
  const std::map<std::string, std::string>& subs = named->*BoostErrorPeek::substitutions;
  const std::string& t = named->m_error_template;
  std::string out;
  for (std::size_t i = 0; i < t.size();) {
    const std::size_t end = t[i] == '%' ? t.find('%', i + 1) : std::string::npos;
    if (end != std::string::npos) {
      const std::string name = t.substr(i + 1, end - i - 1);
      if (name == "canonical_option") {
        out += named->get_option_name();
        i = end + 1;
        continue;
      }
      if (auto it = subs.find(name); it != subs.end()) {
        out += it->second;
        i = end + 1;
        continue;
      }
    }
    out += t[i++];
  }
  return out;
}

// boost reads "-1" into an unsigned option as 2^64 - 1: refuse a negative value for unsigned options.
void check_unsigned(const po::options_description& d, const po::parsed_options& parsed, const std::string& where) {
  for (const auto& o : parsed.options) {
    if (o.string_key.empty()) continue;  // boost's find_nothrow("") throws "ambiguous"
    const po::option_description* desc = d.find_nothrow(o.string_key, false);
    if (desc == nullptr) continue;
    const auto* sem = desc->semantic().get();
    const bool is_unsigned = dynamic_cast<const po::typed_value<std::uint64_t>*>(sem) != nullptr ||
                             dynamic_cast<const po::typed_value<unsigned>*>(sem) != nullptr;
    for (const std::string& v : o.value) {
      const auto first = v.find_first_not_of(" \t");
      if (is_unsigned && first != std::string::npos && v[first] == '-')
        fail_config("{}option '{}' must be a non-negative integer, not '{}'", where, o.string_key, v);
    }
  }
}

// boost's own messages name the option but not the file; put the file in front.
[[noreturn]] void rethrow_config(const std::string& file, const po::error& e) {
  fail_config("job file {}: {}", file, po_what(e));
}

}  // namespace

ParsedJob parse_job_args(const Job& job, const std::vector<std::string>& args) {
  ParsedJob out;
  out.job = &job;
  po::options_description common = common_options(), own = job_options(job);
  po::options_description all;
  all.add(common).add(own);

  po::parsed_options cli = [&] {
    try {
      return po::command_line_parser(args).options(all).run();  // no positionals: every value is named
    } catch (const po::error& e) {
      fail_config("dgemma {}: {} (see `dgemma {} --help`)", job.name, po_what(e), job.name);
    }
  }();
  for (const auto& o : cli.options)
    if (o.position_key >= 0)
      fail_config("dgemma {}: unexpected argument '{}' (options are named: --key value; see `dgemma {} --help`)",
                  job.name, o.value.empty() ? "" : o.value.front(), job.name);
  check_unsigned(all, cli, fmt::format("dgemma {}: ", job.name));
  std::set<std::string> from_cli;
  for (const auto& o : cli.options) from_cli.insert(o.string_key);
  try {
    po::store(cli, out.vm);
  } catch (const po::error& e) {
    fail_config("dgemma {}: {} (see `dgemma {} --help`)", job.name, po_what(e), job.name);
  }
  if (out.vm.count("help")) {
    out.help = true;
    return out;
  }

  std::set<std::string> from_file;
  if (out.vm.count("config")) {
    const std::string file = out.vm["config"].as<std::string>();
    std::ifstream in(file);
    if (!in) fail_config("cannot read job file {}: {}", file, std::strerror(errno));
    try {
      // Only the job's own options belong in a job file (not --config or --help).
      po::parsed_options parsed = po::parse_config_file(in, own, /*allow_unregistered=*/false);
      check_unsigned(own, parsed, fmt::format("job file {}: ", file));
      for (const auto& o : parsed.options) {
        if (from_file.count(o.string_key))
          fail_config("job file {}: option '{}' is given more than once", file, o.string_key);
        from_file.insert(o.string_key);
      }
      po::store(parsed, out.vm);  // values already stored from the command line take precedence
    } catch (const po::error& e) {
      rethrow_config(file, e);
    }
  }
  try {
    po::notify(out.vm);
  } catch (const po::error& e) {
    fail_config("dgemma {}: {}", job.name, po_what(e));
  }

  std::ostringstream r;
  r << fmt::format("# dgemma {} - resolved configuration\n", job.name);
  if (out.vm.count("config")) r << fmt::format("# job file: {}\n", out.vm["config"].as<std::string>());
  for (const auto& opt : own.options()) {
    const std::string& name = opt->long_name();
    if (!out.vm.count(name)) {
      r << fmt::format("# {} = (unset)\n", name);
      continue;
    }
    const char* source = from_cli.count(name) ? "command line" : from_file.count(name) ? "job file" : "default";
    r << fmt::format("{} = {}    # {}\n", name, value_text(out.vm[name].value()), source);
  }
  out.resolved = r.str();
  return out;
}

std::string job_help(const Job& job) {
  std::ostringstream s;
  s << fmt::format("Usage: dgemma {} [options]\n\n{}\n", job.name, job.summary);
  if (!job.details.empty()) s << '\n' << job.details << '\n';
  s << '\n' << common_options();
  if (job.add_options) s << '\n' << job_options(job);
  s << "\nExit codes: 0 ok, 1 runtime error, 2 usage or configuration error, 42 stopped on a signal\n"
       "after checkpointing (requeue and resume).\n";
  return s.str();
}

std::string global_help() {
  std::ostringstream s;
  s << "dgemma " DGEMMA_VERSION " - DiffusionGemma fine-tuning, checkpoint conversion and batch generation\n\n"
       "Usage: dgemma <job> [options]       (run under mpirun or srun for more than one rank)\n"
       "       dgemma <job> --help\n"
       "       dgemma --version\n\nJobs:\n";
  for (const Job& j : all_jobs())
    s << fmt::format("  {:<10}{}{}\n", j.name, j.summary, j.run ? "" : " (not built yet)");
  s << "\nOptions come from an INI job file (--config FILE) and the command line; the command line wins.\n"
       "\nExit codes:\n"
       "  0   the job finished\n"
       "  1   runtime error (I/O, numerics, communication)\n"
       "  2   usage or configuration error (bad option, job file, input file or model config)\n"
       "  42  stopped on SIGUSR1/SIGTERM after checkpointing: requeue the job and --resume\n";
  return s.str();
}

namespace {

// Before MPI starts we only know our rank from the launcher; use it to print usage errors once.
bool launcher_rank_zero() {
  for (const char* v : {"OMPI_COMM_WORLD_RANK", "PMIX_RANK", "PMI_RANK", "SLURM_PROCID"})
    if (const char* s = std::getenv(v)) return std::atoi(s) == 0;
  return true;
}

}  // namespace

int run_cli(int argc, char** argv) {
  const bool speak = launcher_rank_zero();
  std::vector<std::string> args(argv + 1, argv + argc);
  if (args.empty()) {
    if (speak) fmt::print(stderr, "{}", global_help());
    return kExitUsageError;
  }
  if (args[0] == "--help" || args[0] == "-h" || args[0] == "help") {
    if (speak) fmt::print("{}", global_help());
    return kExitOk;
  }
  if (args[0] == "--version") {
    if (speak) fmt::print("dgemma {}\n", DGEMMA_VERSION);
    return kExitOk;
  }
  const Job* job = find_job(args[0]);
  if (!job) {
    if (speak) {
      std::vector<std::string_view> names;
      for (const Job& j : all_jobs()) names.push_back(j.name);
      fmt::print(stderr, "dgemma: unknown job '{}' (jobs: {}; see `dgemma --help`)\n", args[0],
                 fmt::join(names, ", "));
    }
    return kExitUsageError;
  }
  args.erase(args.begin());

  ParsedJob parsed;
  try {
    parsed = parse_job_args(*job, args);
  } catch (const ConfigError& e) {
    if (speak) fmt::print(stderr, "dgemma: error: {}\n", e.what());
    return kExitUsageError;
  }
  if (parsed.help) {
    if (speak) fmt::print("{}", job_help(*job));
    return kExitOk;
  }
  if (!job->run) {
    if (speak)
      fmt::print(stderr, "dgemma {}: this job is not built yet in dgemma {} ({})\n", job->name, DGEMMA_VERSION,
                 job->details);
    return kExitUsageError;
  }

  Runtime rt = start_runtime(&argc, &argv, job->uses_gpu);
  int code = kExitOk;
  try {
    log::info("dgemma {} {} | {} rank(s) on {} node(s) | device {}", DGEMMA_VERSION, job->name, rt.size, rt.nodes,
              rt.device_description);
    if (rt.rank == 0) fmt::print("{}", parsed.resolved), std::fflush(stdout);
    JobEnv env{rt.world.get(), rt.rank, rt.node_id, rt.cuda_device, [&rt] { return rt.stop_requested(); },
               rt.local_size};
    JobContext ctx{env, parsed.vm, parsed.resolved};
    code = job->run(ctx);
  } catch (const ConfigError& e) {
    log::error("{}", e.what());
    if (rt.size > 1) abort_all(kExitUsageError);
    code = kExitUsageError;
  } catch (const std::exception& e) {
    log::error("{}", e.what());
    if (rt.size > 1) abort_all(kExitRuntimeError);
    code = kExitRuntimeError;
  }
  finish_runtime(rt);
  return code;
}

}  // namespace dg
