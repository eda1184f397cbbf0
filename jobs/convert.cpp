// `dgemma convert`: Hugging Face safetensors <-> sharded HDF5 checkpoint, lossless both ways.
//
//   --from hf --to h5   every HF tensor becomes a checkpoint tensor: model tensors under their native
//                       names ("param/<native>", experts transposed), tensors the model does not use
//                       under "carried/<HF name>" (vision tower, ...), in their stored dtype; config.json
//                       and generation_config.json go into the manifest's sections. Tensors are spread
//                       over the ranks (largest first, to the least loaded rank); each rank streams its
//                       own tensors from the mmap'ed files into its own rank file.
//   --from h5 --to hf   the reverse: the same shard plan on every rank, shard i written by rank i % size,
//                       the index, configs and tokenizer files by rank 0, all into OUT.tmp, renamed to OUT
//                       when every rank is done.
// HF -> H5 -> HF reproduces the original safetensors bytes (same tensors, dtypes, layout and shard size).
// Reading the checkpoint verifies every shard against its manifest checksum (a corrupt rank file is exit 2,
// naming it and the tensor); NaN / Inf weights are copied as they are both ways, with a warning naming them.
#include <chrono>
#include <filesystem>
#include <fstream>

#include "jobs/log.h"
#include "io/atomic_file.h"
#include "io/checkpoint.h"
#include "io/data_check.h"
#include "io/hf_config.h"
#include "io/hf_model.h"
#include "io/hf_names.h"
#include "io/safetensors.h"
#include "jobs/export.h"
#include "jobs/checkpoint_group.h"
#include "jobs/jobs.h"
#include "parallel/comm.h"

namespace dg {

namespace fs = std::filesystem;

void convert_options(po::options_description& d) {
  d.add_options()
      ("from", po::value<std::string>()->value_name("hf|h5"), "input format")
      ("to", po::value<std::string>()->value_name("hf|h5"), "output format")
      ("in", po::value<std::string>()->value_name("PATH"), "input: HF model directory, or checkpoint dir / step dir")
      ("out", po::value<std::string>()->value_name("PATH"), "output: HF model directory, or checkpoint dir")
      ("step", po::value<std::int64_t>()->default_value(0), "hf -> h5: the step number the checkpoint gets")
      ("role", po::value<std::string>()->default_value("auto"), "h5 -> hf: which weights to export: param, master (sft checkpoints), or auto (param when present, else master)")
      ("dtype", po::value<std::string>()->default_value("keep"), "h5 -> hf: model tensors as keep, bf16 or f32")
      ("max-shard-size", po::value<std::string>()->default_value("5GB"), "h5 -> hf: shard size limit")
      ("tokenizer", po::value<std::string>()->value_name("DIR"), "h5 -> hf: copy tokenizer files from DIR")
      ("overwrite", po::bool_switch(), "replace an existing output");
}

namespace {

using Clock = std::chrono::steady_clock;

// dst [.., b, a] = src [.., a, b] for elements of `es` bytes.
void transpose_bytes(const std::byte* src, const Shape& src_shape, std::size_t es, std::byte* dst) {
  const std::int64_t a = src_shape[src_shape.size() - 2], b = src_shape.back();
  const std::int64_t batch = shape_numel(src_shape) / std::max<std::int64_t>(a * b, 1);
  for (std::int64_t z = 0; z < batch; ++z)
    for (std::int64_t i = 0; i < a; ++i)
      for (std::int64_t j = 0; j < b; ++j)
        std::memcpy(dst + static_cast<std::size_t>(z * a * b + j * a + i) * es,
                    src + static_cast<std::size_t>(z * a * b + i * b + j) * es, es);
}

Shape swapped(Shape s) {
  std::swap(s[s.size() - 1], s[s.size() - 2]);
  return s;
}

struct Progress {
  Clock::time_point start = Clock::now(), last = start;
  std::uint64_t bytes = 0, tensors = 0, total_tensors = 0;
  void add(std::uint64_t b) {
    bytes += b;
    ++tensors;
    const auto now = Clock::now();
    if (std::chrono::duration<double>(now - last).count() >= 5.0) {
      last = now;
      const double s = std::chrono::duration<double>(now - start).count();
      log::info("convert: rank 0 {}/{} tensors, {:.1f} MB, {:.1f} MB/s", tensors, total_tensors, bytes * 1e-6,
                bytes * 1e-6 / s);
    }
  }
};

// A warning from whichever rank finds it (log::warn speaks for rank 0 only; here each rank reads its own
// tensors).
template <class... Args>
void warn_any_rank(const Comm& world, fmt::format_string<Args...> f, Args&&... args) {
  fmt::print(stderr, "[{}] warning{}: {}\n", log::timestamp(),
             world.rank() > 0 ? fmt::format(" (rank {})", world.rank()) : "", fmt::format(f, std::forward<Args>(args)...));
  std::fflush(stderr);
}

void finish_report(Comm& world, const Progress& p, const std::string& what) {
  std::int64_t mine[2] = {static_cast<std::int64_t>(p.bytes), static_cast<std::int64_t>(p.tensors)}, all[2] = {0, 0};
  world.all_reduce(mine, all, 2, DType::I64, ReduceOp::Sum);
  const double s = std::max(1e-9, std::chrono::duration<double>(Clock::now() - p.start).count());
  log::info("convert: {} tensors, {:.1f} MB in {:.2f} s ({:.1f} MB/s over {} rank(s)) -> {}", all[1], all[0] * 1e-6, s,
            all[0] * 1e-6 / s, world.size(), what);
}

int hf_to_h5(JobContext& ctx, const std::string& in, const std::string& out) {
  Comm& world = *ctx.rt.world;
  const fs::path dir = fs::is_directory(in) ? fs::path(in) : fs::path(in).parent_path();
  const nlohmann::json config_json = read_json_file((dir / "config.json").string());
  const ModelConfig c = parse_model_config(config_json, (dir / "config.json").string());
  const ShardedSafetensors files = ShardedSafetensors::open(in);

  // Every tensor must be mapped or carried, and every model tensor present, before anything is written.
  std::map<std::string, Shape> expected;
  for (const ParamSpec& p : model_params(c)) expected.emplace(p.name, p.shape);
  struct Item {
    std::string hf, key;
    HfName name;
    std::uint64_t bytes;
  };
  std::vector<Item> items;
  for (const std::string& hf : files.names()) {
    const SafetensorsEntry& e = files.entry(hf);
    const HfName n = hf_to_native(hf);
    if (!e.type) fail_config("{}: tensor '{}' has dtype {}, which dgemma checkpoints cannot hold", files.path(), hf, e.dtype);
    if (n.kind == HfName::Kind::Unknown)
      fail_config("{}: tensor '{}' is neither part of the model nor a known carried tensor", files.path(), hf);
    if (n.kind == HfName::Kind::Mapped) {
      auto it = expected.find(n.name);
      if (it == expected.end()) fail_config("{}: tensor '{}' is not part of the model in config.json", files.path(), hf);
      if ((n.transposed ? swapped(e.shape) : e.shape) != it->second)
        fail_config("{}: tensor '{}' has shape {}, config.json implies {}", files.path(), hf, shape_str(e.shape),
                    shape_str(n.transposed ? swapped(it->second) : it->second));
      expected.erase(it);
    }
    items.push_back({hf, n.kind == HfName::Kind::Mapped ? checkpoint_key("param", n.name) : checkpoint_key("carried", hf), n,
                     e.nbytes()});
  }
  if (!expected.empty())
    fail_config("{}: missing tensor '{}' ({} missing in all)", files.path(), native_to_hf(expected.begin()->first).name,
                expected.size());

  // Largest first to the least loaded rank: the same answer on every rank.
  std::vector<std::size_t> order(items.size());
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](std::size_t a, std::size_t b) { return items[a].bytes > items[b].bytes; });
  std::vector<std::uint64_t> load(static_cast<std::size_t>(world.size()), 0);
  std::vector<int> owner(items.size());
  for (std::size_t i : order) {
    const auto r = static_cast<std::size_t>(std::min_element(load.begin(), load.end()) - load.begin());
    owner[i] = static_cast<int>(r);
    load[r] += items[i].bytes;
  }

  CheckpointWriterOptions wopts;
  wopts.overwrite = ctx.vm["overwrite"].as<bool>();
  CommCheckpointGroup group(world);
  CheckpointWriter writer(group, out, ctx.vm["step"].as<std::int64_t>(), wopts);
  writer.set_section("hf_config", config_json);
  if (fs::exists(dir / "generation_config.json"))
    writer.set_section("hf_generation_config", read_json_file((dir / "generation_config.json").string()));
  writer.set_section("source", {{"format", "hf"}, {"path", fs::absolute(in).string()}});
  Progress prog;
  prog.total_tensors = static_cast<std::uint64_t>(std::count(owner.begin(), owner.end(), world.rank()));
  std::vector<std::byte> buf;
  // A failed write (disk full, I/O error) stops this rank's writing; the writer keeps the error and the
  // commit below reports it on every rank together and removes the partial step_N.tmp (exit 1).
  bool write_failed = false;
  for (std::size_t i = 0; i < items.size() && !write_failed; ++i) {
    if (owner[i] != world.rank()) continue;
    const SafetensorsEntry& e = files.entry(items[i].hf);
    const std::span<const std::byte> src = files.bytes(items[i].hf);
    const Shape shape = items[i].name.transposed ? swapped(e.shape) : e.shape;
    const std::byte* data = src.data();
    // Non-finite weights are copied as they are (the conversion is lossless) but named: loading them for
    // compute (generate, sft) refuses them.
    if (const NonFinite bad = find_non_finite(src.data(), *e.type, e.numel()))
      warn_any_rank(world, "convert: {}: tensor '{}': non-finite value {} at element {} ({} non-finite in all); copied "
                    "as is", files.file_of(items[i].hf).path(), items[i].hf, bad.first_value, bad.first, bad.count);
    if (items[i].name.transposed) {
      buf.resize(src.size());
      transpose_bytes(src.data(), e.shape, dtype_size(*e.type), buf.data());
      data = buf.data();
    }
    try {
      writer.add(items[i].key, shape, *e.type, Slice::whole(shape), data);
    } catch (const std::exception&) {
      write_failed = true;
      continue;
    }
    prog.add(e.nbytes());
  }
  const std::string done = writer.commit();
  finish_report(world, prog, done);
  return 0;
}

}  // namespace

int export_checkpoint_to_hf(Comm& world, const std::string& in, const std::string& out, const HfExportOptions& o) {
  CheckpointReader reader = CheckpointReader::open(in);
  if (!reader.has_section("hf_config"))
    fail_config("{}: the checkpoint has no hf_config section (it was not made from an HF model)", reader.dir());
  nlohmann::json config_json = reader.section("hf_config");
  if (o.set_config_dtype && (o.dtype == "bf16" || o.dtype == "f32")) config_json["dtype"] = o.dtype == "bf16" ? "bfloat16" : "float32";
  const ModelConfig c = parse_model_config(config_json, reader.dir() + "/manifest.json: hf_config");
  std::string role = o.role;
  const std::string& dtype_opt = o.dtype;
  if (role == "auto") {  // convert-made checkpoints hold "param/", sft checkpoints the "master/" weights
    role = "master";
    for (const auto& [key, t] : reader.manifest().tensors)
      if (key.rfind("param/", 0) == 0) role = "param";
  }
  if (role != "param" && role != "master") fail_config("convert: --role must be auto, param or master");
  if (dtype_opt != "keep" && dtype_opt != "bf16" && dtype_opt != "f32") fail_config("convert: --dtype must be keep, bf16 or f32");

  struct Item {
    std::string key;  // checkpoint key
    HfName name;      // HF name (in .name) and transpose flag
    DType stored, written;
    Shape hf_shape;
  };
  std::vector<Item> items;
  std::map<std::string, Shape> expected;
  for (const ParamSpec& p : model_params(c)) expected.emplace(p.name, p.shape);
  for (const auto& [key, t] : reader.manifest().tensors) {
    const auto slash = key.find('/');
    const std::string r = key.substr(0, slash), rest = key.substr(slash + 1);
    if (r == "carried") {
      items.push_back({key, HfName{HfName::Kind::Carried, rest, false}, t.dtype, t.dtype, t.shape});
    } else if (r == role) {
      auto it = expected.find(rest);
      if (it == expected.end()) fail_config("{}: '{}' is not a tensor of the model in hf_config", reader.dir(), key);
      if (it->second != t.shape)
        fail_config("{}: '{}' has shape {}, hf_config implies {}", reader.dir(), key, shape_str(t.shape), shape_str(it->second));
      expected.erase(it);
      const HfName n = native_to_hf(rest);
      const DType w = dtype_opt == "keep" ? t.dtype : dtype_opt == "bf16" ? DType::BF16 : DType::F32;
      items.push_back({key, n, t.dtype, w, n.transposed ? swapped(t.shape) : t.shape});
    }
  }
  if (!expected.empty())
    fail_config("{}: no '{}' tensor for {} ({} missing in all)", reader.dir(), role, expected.begin()->first, expected.size());

  std::vector<TensorSpec> specs;
  std::map<std::string, std::size_t> by_name;
  for (std::size_t i = 0; i < items.size(); ++i) {
    specs.push_back({items[i].name.name, std::string(safetensors_dtype(items[i].written).name), items[i].hf_shape});
    by_name[items[i].name.name] = i;
  }
  const ShardPlan plan = plan_shards(specs, o.max_shard_size);

  const fs::path final_dir = fs::path(out).lexically_normal(), tmp = final_dir.string() + ".tmp";
  const bool overwrite = o.overwrite;
  const std::vector<std::string>& extra = o.extra_files;
  std::int32_t ok = 1;
  std::string problem;
  if (world.rank() == 0) {
    if (fs::exists(final_dir) && !overwrite) {
      ok = 0;
      problem = fmt::format("output directory {} already exists (use --overwrite to replace it)", final_dir.string());
    } else {
      std::error_code ec;
      fs::remove_all(tmp, ec);
      if (!fs::create_directories(tmp, ec)) ok = 0, problem = fmt::format("cannot create {}: {}", tmp.string(), ec.message());
    }
  }
  world.broadcast(&ok, 1, DType::I32, 0);
  if (!ok) {
    if (world.rank() == 0) fail_config("{}", problem);
    return 2;  // rank 0 reports; the others stop quietly with the same code
  }

  Progress prog;
  for (std::size_t f = 0; f < plan.files.size(); ++f) prog.total_tensors += static_cast<int>(f) % world.size() == world.rank() ? plan.tensors[f].size() : 0;
  std::vector<std::byte> buf;
  for (std::size_t f = 0; f < plan.files.size(); ++f) {
    if (static_cast<int>(f % static_cast<std::size_t>(world.size())) != world.rank()) continue;
    SafetensorsWriter writer((tmp / plan.files[f]).string(), plan.tensors[f]);
    for (const TensorSpec& s : plan.tensors[f]) {
      const Item& it = items[by_name.at(s.name)];
      Tensor t = reader.read(it.key, Slice::whole(reader.tensor(it.key).shape));  // checksum-verified
      if (const NonFinite bad = find_non_finite(t.raw(), t.dtype(), t.numel()))
        warn_any_rank(world, "convert: checkpoint tensor '{}': non-finite value {} at element {} ({} non-finite in all); "
                      "copied as is", it.key, bad.first_value, bad.first, bad.count);
      if (it.written != it.stored) t = t.to(it.written);
      const std::size_t es = dtype_size(it.written), nbytes = static_cast<std::size_t>(t.numel()) * es;
      if (it.name.transposed) {
        buf.resize(nbytes);
        transpose_bytes(static_cast<const std::byte*>(t.raw()), t.shape(), es, buf.data());
        writer.write(s.name, buf.data(), nbytes);
      } else {
        writer.write(s.name, t.raw(), nbytes);
      }
      prog.add(nbytes);
    }
    writer.finish();
  }
  reader.close_files();
  world.barrier();
  if (world.rank() == 0) {
    if (plan.sharded()) write_file_atomic((tmp / kSafetensorsIndexName).string(), shard_index_json(plan), false);
    write_file_atomic((tmp / "config.json").string(), config_json.dump(2) + "\n", false);
    if (reader.has_section("hf_generation_config"))
      write_file_atomic((tmp / "generation_config.json").string(), reader.section("hf_generation_config").dump(2) + "\n", false);
    for (const std::string& f : extra) {
      std::ifstream src(f, std::ios::binary);
      const std::string bytes((std::istreambuf_iterator<char>(src)), std::istreambuf_iterator<char>());
      write_file_atomic((tmp / fs::path(f).filename()).string(), bytes, false);
    }
    for (const auto& [name, bytes] : o.extra_contents) write_file_atomic((tmp / name).string(), bytes, false);
    std::error_code ec;
    if (fs::exists(final_dir)) {
      const fs::path old = final_dir.string() + ".old";
      fs::remove_all(old, ec);
      fs::rename(final_dir, old);
      fs::rename(tmp, final_dir);
      fs::remove_all(old, ec);
    } else {
      fs::rename(tmp, final_dir);
    }
    fsync_directory(final_dir.has_parent_path() ? final_dir.parent_path().string() : ".");
  }
  world.barrier();
  if (o.report) finish_report(world, prog, final_dir.string());
  return 0;
}

namespace {

int h5_to_hf(JobContext& ctx, const std::string& in, const std::string& out) {
  HfExportOptions o;
  o.role = ctx.vm["role"].as<std::string>();
  o.dtype = ctx.vm["dtype"].as<std::string>();
  o.max_shard_size = parse_byte_size(ctx.vm["max-shard-size"].as<std::string>());
  o.overwrite = ctx.vm["overwrite"].as<bool>();
  if (ctx.vm.count("tokenizer")) {
    const fs::path t(ctx.vm["tokenizer"].as<std::string>());
    for (const char* f : {"tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "special_tokens_map.json"})
      if (fs::exists(t / f)) o.extra_files.push_back((t / f).string());
    if (o.extra_files.empty()) fail_config("convert: no tokenizer.json in {}", t.string());
  }
  return export_checkpoint_to_hf(*ctx.rt.world, in, out, o);
}

}  // namespace

int convert_run(JobContext& ctx) {
  for (const char* o : {"from", "to", "in", "out"})
    if (!ctx.vm.count(o)) fail_config("convert: --{} is required", o);
  const std::string from = ctx.vm["from"].as<std::string>(), to = ctx.vm["to"].as<std::string>();
  const std::string in = ctx.vm["in"].as<std::string>(), out = ctx.vm["out"].as<std::string>();
  if (!fs::exists(in)) fail_config("convert: input {} does not exist", in);
  if (from == "hf" && to == "h5") return hf_to_h5(ctx, in, out);
  if (from == "h5" && to == "hf") return h5_to_hf(ctx, in, out);
  fail_config("convert: --from/--to must be hf/h5 or h5/hf, not {}/{}", from, to);
}

}  // namespace dg
