// `dgemma inspect`: lists the tensors of a Hugging Face model directory (or a single safetensors file)
// and checks them against config.json through the same name adapter the loader uses.
#include <filesystem>
#include <map>

#include "jobs/log.h"
#include "io/hf_config.h"
#include "io/hf_model.h"
#include "io/hf_names.h"
#include "io/safetensors.h"
#include "jobs/jobs.h"

namespace dg {

void inspect_options(po::options_description& d) {
  d.add_options()
      ("path", po::value<std::string>()->value_name("PATH"), "HF model directory, index or .safetensors file")
      ("list", po::value<bool>()->default_value(true), "print one line per tensor");
}

int inspect_run(JobContext& ctx) {
  if (!ctx.vm.count("path")) fail_config("inspect: --path is required");
  const std::string path = ctx.vm["path"].as<std::string>();
  if (!std::filesystem::exists(path)) fail_config("inspect: {} does not exist", path);
  const ShardedSafetensors files = ShardedSafetensors::open(path);
  for (const std::string& w : files.warnings()) log::warn("{}", w);

  std::optional<ModelConfig> config;
  const std::filesystem::path dir = std::filesystem::is_directory(path) ? std::filesystem::path(path)
                                                                       : std::filesystem::path(path).parent_path();
  if (std::filesystem::exists(dir / "config.json")) config = load_model_config((dir / "config.json").string());

  std::map<std::string, Shape> expected;  // native name -> native shape
  if (config)
    for (const ParamSpec& p : model_params(*config)) expected.emplace(p.name, p.shape);
  std::uint64_t bytes = 0, elements = 0;
  std::map<std::string, std::uint64_t> per_dtype;
  std::vector<std::string> problems;
  int carried = 0;
  for (const std::string& name : files.names()) {
    const SafetensorsEntry& e = files.entry(name);
    bytes += e.nbytes();
    elements += static_cast<std::uint64_t>(e.numel());
    per_dtype[e.dtype] += e.nbytes();
    const HfName n = hf_to_native(name);
    std::string role = n.kind == HfName::Kind::Carried ? "carried" : n.kind == HfName::Kind::Mapped ? n.name : "UNKNOWN";
    if (n.kind == HfName::Kind::Carried) ++carried;
    if (config && n.kind != HfName::Kind::Carried) {
      auto it = n.kind == HfName::Kind::Mapped ? expected.find(n.name) : expected.end();
      if (it == expected.end()) {
        problems.push_back(fmt::format("{}: not part of the model described by config.json", name));
      } else {
        Shape want = it->second;
        if (n.transposed) std::swap(want[want.size() - 1], want[want.size() - 2]);
        if (e.shape != want) problems.push_back(fmt::format("{}: shape {}, config.json implies {}", name, shape_str(e.shape), shape_str(want)));
        expected.erase(it);
      }
    }
    if (ctx.vm["list"].as<bool>())
      log::info("{:<72} {:<5} {:<22} {:>14}  {}", name, e.dtype, shape_str(e.shape), e.nbytes(), role);
  }
  for (const auto& [native, shape] : expected)
    problems.push_back(fmt::format("missing {} (native {}, shape {})", native_to_hf(native).name, native, shape_str(shape)));

  log::info("{}: {} tensors in {} file(s), {:.3f} GB, {} elements; {} carried (not used by the text model)",
            files.path(), files.names().size(), files.files().size(), static_cast<double>(bytes) * 1e-9, elements, carried);
  for (const auto& [dt, b] : per_dtype) log::info("  {:<8} {:>16} bytes", dt, b);
  if (config) log::info("config.json: {}", config->summary());
  else log::warn("no config.json next to {}: tensor names and shapes were not checked", path);
  if (!problems.empty()) {
    for (const std::string& p : problems) log::error("{}", p);
    fail_config("inspect: {} problem(s) in {}", problems.size(), path);
  }
  log::info("inspect: OK");
  return 0;
}

}  // namespace dg
