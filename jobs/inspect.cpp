// `dgemma inspect`: lists the tensors of a Hugging Face model directory (or a single safetensors file) and
// checks them against config.json through the same name adapter and the same rules the loaders apply
// (model weights F32, BF16 or F16, every value finite; config.json and generation_config.json typed and
// range-checked), or lists and checks a checkpoint (a ckpt_dir or a step directory): manifest and rank
// files always, and with --verify every shard's data against its checksum and for non-finite values.
// Any problem is reported by name and the job exits 2.
#include <filesystem>
#include <map>

#include "io/checkpoint.h"
#include "io/data_check.h"
#include "io/hf_config.h"
#include "io/hf_model.h"
#include "io/hf_names.h"
#include "io/safetensors.h"
#include "jobs/jobs.h"
#include "jobs/log.h"

namespace dg {

namespace fs = std::filesystem;

void inspect_options(po::options_description& d) {
  d.add_options()
      ("path", po::value<std::string>()->value_name("PATH"),
       "HF model directory, index or .safetensors file; or a checkpoint directory or step directory")
      ("list", po::value<bool>()->default_value(true), "print one line per tensor")
      ("verify", po::bool_switch(),
       "checkpoints: read every shard, check its checksum and its values (NaN/Inf); HF models: values are "
       "always checked");
}

namespace {

// A checkpoint directory (ckpt_dir with `latest` or step_* directories) or a step directory.
bool is_checkpoint(const fs::path& p) {
  std::error_code ec;
  if (!fs::is_directory(p, ec)) return false;
  return fs::exists(p / "manifest.json", ec) || fs::exists(p / "latest", ec) ||
         !list_checkpoint_steps(p.string()).empty();
}

void report_problems(const std::vector<std::string>& problems, const std::string& path) {
  if (problems.empty()) return;
  for (const std::string& p : problems) log::error("{}", p);
  fail_config("inspect: {} problem(s) in {}", problems.size(), path);
}

int inspect_checkpoint(JobContext& ctx, const std::string& path) {
  CheckpointReader rd = CheckpointReader::open(path);
  const std::string manifest = rd.dir() + "/manifest.json";
  std::vector<std::string> problems;
  std::uint64_t bytes = 0;
  for (const auto& [key, t] : rd.manifest().tensors) {
    const std::uint64_t nbytes = static_cast<std::uint64_t>(shape_numel(t.shape)) * dtype_size(t.dtype);
    bytes += nbytes;
    const std::string role = key.substr(0, key.find('/'));
    if ((role == "param" || role == "master") && !is_float(t.dtype))
      problems.push_back(fmt::format("'{}': dtype {}; model weights must be f32, bf16 or f16", key, dtype_name(t.dtype)));
    if (ctx.vm["list"].as<bool>())
      log::info("{:<72} {:<5} {:<22} {:>14}  {} shard(s)", key, dtype_name(t.dtype), shape_str(t.shape), nbytes,
                t.shards.size());
  }
  log::info("{}: step {}, {} tensors in {} rank file(s), {:.3f} GB", rd.dir(), rd.step(), rd.manifest().tensors.size(),
            rd.manifest().files.size(), static_cast<double>(bytes) * 1e-9);
  if (rd.has_section("hf_config"))
    log::info("hf_config: {}", parse_model_config(rd.section("hf_config"), manifest + ": hf_config").summary());
  if (rd.has_section("hf_generation_config"))
    check_generation_config(rd.section("hf_generation_config"), manifest + ": hf_generation_config");
  rd.verify();  // every rank file and dataset against the manifest (ConfigError naming the first problem)

  if (!ctx.vm["verify"].as<bool>()) {
    log::info("inspect: manifest and rank files checked; --verify also reads every shard (checksums, NaN/Inf)");
  } else {
    if (!rd.has_checksums())
      log::warn("{}: some shards have no checksums (a checkpoint of an older dgemma): their data cannot be verified",
                manifest);
    for (const auto& [key, t] : rd.manifest().tensors) {
      NonFinite bad;
      std::int64_t bad_at = -1;  // global row-major index of the first non-finite element
      auto visit = [&](const CheckpointShard& s, std::int64_t first, const void* data, std::int64_t n) {
        const NonFinite here = find_non_finite(data, t.dtype, n);
        if (!here) return;
        std::int64_t local = first + here.first, global = 0;  // dataset element -> tensor element
        if (s.slice.flat) {
          global = s.slice.begin + local;
        } else {
          Shape idx(t.shape.size());
          for (std::size_t d = idx.size(); d-- > 0; local /= s.slice.count[d])
            idx[d] = s.slice.offset[d] + local % s.slice.count[d];
          for (std::size_t d = 0; d < idx.size(); ++d) global = global * t.shape[d] + idx[d];
        }
        if (bad_at < 0 || global < bad_at) bad_at = global, bad.first_value = here.first_value;
        bad.count += here.count;
      };
      try {
        using Visitor = CheckpointReader::ShardVisitor;
        rd.verify_tensor(key, is_float(t.dtype) ? Visitor(visit) : Visitor());
      } catch (const ConfigError& e) {
        problems.push_back(e.what());
        continue;
      }
      if (bad) {
        const std::string what = fmt::format("'{}': non-finite value {} at element {} ({} non-finite in all)", key,
                                             bad.first_value, bad_at, bad.count);
        if (key.rfind("carried/", 0) == 0) log::warn("{} (a carried tensor: not used by dgemma)", what);
        else problems.push_back(what);
      }
    }
    if (problems.empty()) log::info("inspect: read every shard{}", rd.has_checksums() ? "; every checksum matches" : "");
  }
  report_problems(problems, path);
  log::info("inspect: OK");
  return 0;
}

int inspect_hf(JobContext& ctx, const std::string& path) {
  const ShardedSafetensors files = ShardedSafetensors::open(path);
  for (const std::string& w : files.warnings()) log::warn("{}", w);

  std::optional<ModelConfig> config;
  const fs::path dir = fs::is_directory(path) ? fs::path(path) : fs::path(path).parent_path();
  if (fs::exists(dir / "config.json")) config = load_model_config((dir / "config.json").string());
  if (fs::exists(dir / "generation_config.json")) read_json_file((dir / "generation_config.json").string());  // checks it

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
    // The loaders' rules: a model weight is F32, BF16 or F16 (HfTensorReader) and finite (HfTensorReader::read).
    if (n.kind == HfName::Kind::Mapped && (!e.type || !is_float(*e.type)))
      problems.push_back(fmt::format("{}: dtype {}; model weights must be F32, BF16 or F16", name, e.dtype));
    if (e.type && is_float(*e.type)) {
      const NonFinite bad = find_non_finite(files.bytes(name).data(), *e.type, e.numel());
      if (bad) {
        const std::string what = fmt::format("{}: non-finite value {} at element {} ({} non-finite in all)", name,
                                             bad.first_value, bad.first, bad.count);
        if (n.kind == HfName::Kind::Carried) log::warn("{} (a carried tensor: not used by dgemma)", what);
        else problems.push_back(what);
      }
    }
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
  report_problems(problems, path);
  log::info("inspect: OK");
  return 0;
}

}  // namespace

int inspect_run(JobContext& ctx) {
  if (!ctx.vm.count("path")) fail_config("inspect: --path is required");
  const std::string path = ctx.vm["path"].as<std::string>();
  if (!fs::exists(path)) fail_config("inspect: {} does not exist", path);
  if (is_checkpoint(path)) return inspect_checkpoint(ctx, path);
  return inspect_hf(ctx, path);
}

}  // namespace dg
