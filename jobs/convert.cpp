// `dgemma convert`: Hugging Face safetensors <-> sharded HDF5 checkpoint, lossless both ways.
//
//   --from hf --to h5   every HF tensor becomes a checkpoint tensor: model tensors under their native
//                       names ("param/<native>", experts transposed), tensors the model does not use
//                       under "carried/<HF name>" (vision tower, ...), in their stored dtype; config.json
//                       and generation_config.json go into the manifest's sections, and so does the
//                       layout of the safetensors files ("hf_layout": file names, each file's tensors in
//                       data order and __metadata__, the index's metadata). Tensors are spread
//                       over the ranks (largest first, to the least loaded rank); each rank streams its
//                       own tensors from the mmap'ed files into its own rank file, 16 MiB at a time.
//   --from h5 --to hf   the reverse: the recorded files (or, for a checkpoint without that record such as
//                       sft's, or with --max-shard-size given, the files save_pretrained would write:
//                       io/hf_writer.h save_pretrained_layout); the same plan and spread of tensors over the ranks on
//                       every rank; rank 0 creates every safetensors file (header, size) in OUT.tmp, each
//                       rank writes its tensors at their offsets (pwrite), streamed from the checkpoint; the
//                       index, configs and tokenizer files by rank 0, and OUT.tmp is renamed to OUT when
//                       every rank is done (a failure anywhere removes OUT.tmp and leaves OUT as it was).
// Memory: a rank holds pieces of 16 MiB plus, for a transposed tensor (experts), one of its matrices
// (twice when writing HF), not the model nor a whole tensor; the bound is printed at start. Ranks with
// nothing left to do wait in Comm::idle_barrier, without spinning a core. Large tensors are written with
// O_DIRECT where the file system takes it (io/direct_write.h; --direct-io false: through the page cache).
// HF -> H5 -> HF reproduces the original safetensors files and index byte for byte, sharded or not.
// Reading the checkpoint verifies every shard against its manifest checksum (a corrupt rank file is exit 2,
// naming it and the tensor); NaN / Inf weights are copied as they are both ways, with a warning naming them.
#include <sys/resource.h>

#include <chrono>
#include <filesystem>
#include <fstream>

#include "jobs/log.h"
#include "io/atomic_file.h"
#include "io/checkpoint.h"
#include "io/data_check.h"
#include "io/direct_write.h"
#include "io/hf_config.h"
#include "io/hf_model.h"
#include "io/hf_names.h"
#include "io/hf_writer.h"
#include "io/safetensors.h"
#include "io/transpose.h"
#include "jobs/export.h"
#include "jobs/tensor_copy.h"
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
      ("max-shard-size", po::value<std::string>()->default_value("50GB"), "h5 -> hf: shard size limit (given: split "
       "as save_pretrained does, instead of keeping the original files)")
      ("tokenizer", po::value<std::string>()->value_name("DIR"), "h5 -> hf: copy tokenizer files from DIR")
      ("direct-io", po::value<bool>()->default_value(true, "true"),
       "write large tensors with O_DIRECT, past the page cache, where the file system allows it (false: buffered)")
      ("overwrite", po::bool_switch(), "replace an existing output");
}

namespace {

using Clock = std::chrono::steady_clock;

// agree_idle (parallel/comm.h), and on failure `on_error` runs on every rank before the error is rethrown.
void agree_idle_or(Comm& world, const std::function<void()>& fn, const std::function<void()>& on_error) {
  try {
    agree_idle(world, fn);
  } catch (...) {
    on_error();
    throw;
  }
}

std::int64_t peak_rss_kb() {
  rusage u{};
  getrusage(RUSAGE_SELF, &u);
  return u.ru_maxrss;  // KiB on Linux
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
  const double s = std::max(1e-9, std::chrono::duration<double>(Clock::now() - p.start).count());
  std::int64_t mine[2] = {static_cast<std::int64_t>(p.bytes), static_cast<std::int64_t>(p.tensors)}, all[2] = {0, 0};
  std::int64_t rss = peak_rss_kb();
  world.all_reduce(mine, all, 2, DType::I64, ReduceOp::Sum);
  world.all_reduce(&rss, &rss, 1, DType::I64, ReduceOp::Max);
  log::info("convert: {} tensors, {:.1f} MB in {:.2f} s ({:.1f} MB/s over {} rank(s)), peak RSS {:.0f} MB (largest "
            "rank) -> {}", all[1], all[0] * 1e-6, s, all[0] * 1e-6 / s, world.size(), rss * 1024e-6, what);
}

// The bound on what a rank holds while converting, printed at start: `pieces` buffers of kPieceBytes,
// `matrices` copies of the largest transposed matrix and the O_DIRECT staging buffers (process baseline and
// library buffers aside).
void say_working_set(int pieces, std::int64_t largest_matrix_bytes, int matrices) {
  const double mib = 1.0 / (1 << 20), matrix = static_cast<double>(largest_matrix_bytes) * mib;
  const double staging = direct_writes() ? DirectFile::kStagingBuffers * static_cast<double>(DirectFile::kStaging) * mib : 0;
  log::info("convert: working set per rank <= {:.0f} MiB: {} x {} MiB pieces + {} x the largest transposed matrix "
            "({:.1f} MiB) + {:.0f} MiB of write staging; not the model, nor a whole tensor",
            pieces * static_cast<double>(kPieceBytes) * mib + matrices * matrix + staging, pieces, kPieceBytes >> 20,
            matrices, matrix, staging);
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
    checkpoint_dtype(files, hf);  // one a checkpoint holds, checked before anything is written
    if (n.kind == HfName::Kind::Unknown)
      fail_config("{}: tensor '{}' is neither part of the model nor a known carried tensor", files.path(), hf);
    if (n.kind == HfName::Kind::Mapped) {
      auto it = expected.find(n.name);
      if (it == expected.end()) fail_config("{}: tensor '{}' is not part of the model in config.json", files.path(), hf);
      if ((n.transposed ? swap_last2(e.shape) : e.shape) != it->second)
        fail_config("{}: tensor '{}' has shape {}, config.json implies {}", files.path(), hf, shape_str(e.shape),
                    shape_str(n.transposed ? swap_last2(it->second) : it->second));
      expected.erase(it);
    }
    items.push_back({hf, n.kind == HfName::Kind::Mapped ? checkpoint_key("param", n.name) : checkpoint_key("carried", hf), n,
                     e.nbytes()});
  }
  if (!expected.empty())
    fail_config("{}: missing tensor '{}' ({} missing in all)", files.path(), native_to_hf(expected.begin()->first).name,
                expected.size());

  std::vector<std::uint64_t> sizes;
  std::int64_t largest_matrix = 0;
  for (const Item& it : items) {
    sizes.push_back(it.bytes);
    const SafetensorsEntry& e = files.entry(it.hf);
    if (it.name.transposed)
      largest_matrix = std::max<std::int64_t>(largest_matrix, e.shape[e.shape.size() - 2] * e.shape.back() * (e.bits / 8));
  }
  const std::vector<int> owner = spread_over_ranks(sizes, world.size());
  say_working_set(2, largest_matrix, 1);  // the writer's piece, the source pages of one piece; a source matrix

  CheckpointWriterOptions wopts;
  wopts.overwrite = ctx.vm["overwrite"].as<bool>();
  CommCheckpointGroup group(world);
  CheckpointWriter writer(group, out, ctx.vm["step"].as<std::int64_t>(), wopts);
  writer.set_section("hf_config", config_json);
  if (fs::exists(dir / "generation_config.json"))
    writer.set_section("hf_generation_config", read_json_file((dir / "generation_config.json").string()));
  writer.set_section("source", {{"format", "hf"}, {"path", fs::absolute(in).string()}});
  writer.set_section("hf_layout", hf_layout_of(files));  // file names, tensor order, metadata: h5 -> hf keeps them
  Progress prog;
  prog.total_tensors = static_cast<std::uint64_t>(std::count(owner.begin(), owner.end(), world.rank()));
  // A failed write (disk full, I/O error) stops this rank's writing; the writer keeps the error and the
  // commit below reports it on every rank together and removes the partial step_N.tmp (exit 1).
  for (std::size_t i = 0; i < items.size(); ++i) {
    if (owner[i] != world.rank()) continue;
    NonFiniteScan scan;
    try {
      copy_hf_tensor(files, items[i].hf, items[i].name.transposed, writer, items[i].key, scan);
    } catch (const std::exception&) {
      break;
    }
    // Non-finite weights are copied as they are (the conversion is lossless) but named: loading them for
    // compute (generate, sft) refuses them.
    if (const NonFinite& bad = scan.found)
      warn_any_rank(world, "convert: {}: tensor '{}': non-finite value {} at element {} ({} non-finite in all); copied "
                    "as is", files.file_of(items[i].hf).path(), items[i].hf, bad.first_value, bad.first, bad.count);
    prog.add(items[i].bytes);
  }
  const std::string done = writer.commit();
  finish_report(world, prog, done);
  return 0;
}

struct ExportItem {
  std::string key;  // checkpoint key
  HfName name;      // HF name (in .name) and transpose flag
  DType stored, written;
  Shape hf_shape;
};

// Pieces of a checkpoint tensor (its elements in row-major order, in the stored dtype, in order) into their
// place in an HF file: converted to the written dtype; a transposed tensor is gathered one matrix (native
// [a, b]) at a time and written as HF's [b, a].
class HfTensorSink {
 public:
  HfTensorSink(const ExportItem& it, SafetensorsPartWriter& out) : it_(it), out_(out), es_(dtype_size(it.written)) {
    if (!it.name.transposed) return;
    rows_ = it.hf_shape[it.hf_shape.size() - 1];
    cols_ = it.hf_shape[it.hf_shape.size() - 2];
    matrix_.resize(static_cast<std::size_t>(rows_ * cols_) * es_);
    flipped_.resize(matrix_.size());
  }

  void put(std::int64_t first, const void* data, std::int64_t n) {
    DG_CHECK(first == next_, "{}: piece at {} after {} elements", it_.key, first, next_);
    next_ += n;
    const auto* bytes = static_cast<const std::byte*>(data);
    Tensor converted;
    if (it_.written != it_.stored) {
      converted = Tensor::view_of(const_cast<void*>(data), {n}, it_.stored).to(it_.written);
      bytes = static_cast<const std::byte*>(converted.raw());
    }
    if (!it_.name.transposed) {
      out_.write(it_.name.name, static_cast<std::uint64_t>(first) * es_, bytes, static_cast<std::size_t>(n) * es_);
      return;
    }
    const std::int64_t mat = rows_ * cols_;
    while (n > 0) {
      const std::int64_t k = std::min(n, mat - filled_);
      std::memcpy(matrix_.data() + static_cast<std::size_t>(filled_) * es_, bytes, static_cast<std::size_t>(k) * es_);
      filled_ += k, n -= k, bytes += static_cast<std::size_t>(k) * es_;
      if (filled_ < mat) continue;
      transpose_rows(matrix_.data(), rows_, cols_, es_, 0, cols_, flipped_.data());
      out_.write(it_.name.name, static_cast<std::uint64_t>(z_ * mat) * es_, flipped_.data(), flipped_.size());
      ++z_, filled_ = 0;
    }
  }

  void finish() const {
    DG_CHECK(next_ == shape_numel(it_.hf_shape) && filled_ == 0, "{}: {} of {} elements written", it_.key, next_,
             shape_numel(it_.hf_shape));
  }

 private:
  const ExportItem& it_;
  SafetensorsPartWriter& out_;
  std::size_t es_;
  std::int64_t rows_ = 0, cols_ = 0, next_ = 0, filled_ = 0, z_ = 0;
  std::vector<std::byte> matrix_, flipped_;
};

bool one_whole_shard(const CheckpointTensor& t) {
  if (t.shards.size() != 1) return false;
  const Slice& s = t.shards[0].slice;
  return s.flat ? s.begin == 0 && s.end == shape_numel(t.shape)
                : s.count == t.shape && std::all_of(s.offset.begin(), s.offset.end(), [](std::int64_t v) { return v == 0; });
}

// One checkpoint tensor into its HF file, checksum-verified: streamed in the reader's 16 MiB pieces when
// one dataset holds it (convert-made checkpoints), else (shards over several rank files, sft) read whole.
void export_tensor(CheckpointReader& reader, const ExportItem& it, SafetensorsPartWriter& out, const Comm& world) {
  const CheckpointTensor& t = reader.tensor(it.key);
  HfTensorSink sink(it, out);
  NonFiniteScan scan;
  if (one_whole_shard(t)) {
    reader.verify_tensor(it.key, [&](const CheckpointShard&, std::int64_t first, const void* data, std::int64_t n) {
      scan.add(data, t.dtype, first, n);
      sink.put(first, data, n);
    });
  } else {
    const Tensor whole = reader.read(it.key, Slice::whole(t.shape));
    scan.add(whole.raw(), t.dtype, 0, whole.numel());
    sink.put(0, whole.raw(), whole.numel());
  }
  sink.finish();
  if (const NonFinite& bad = scan.found)
    warn_any_rank(world, "convert: checkpoint tensor '{}': non-finite value {} at element {} ({} non-finite in all); "
                  "copied as is", it.key, bad.first_value, bad.first, bad.count);
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

  using Item = ExportItem;
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
      items.push_back({key, n, t.dtype, w, n.transposed ? swap_last2(t.shape) : t.shape});
    }
  }
  if (!expected.empty())
    fail_config("{}: no '{}' tensor for {} ({} missing in all)", reader.dir(), role, expected.begin()->first, expected.size());

  std::vector<TensorSpec> specs;
  for (const Item& it : items)
    specs.push_back({it.name.name, std::string(safetensors_dtype(it.written).name), it.hf_shape});
  // The files the model came in (convert-made checkpoints record them), else as save_pretrained writes.
  std::optional<HfShardLayout> layout;
  if (o.keep_layout && reader.has_section("hf_layout")) {
    std::string why;
    layout = recorded_hf_layout(reader.section("hf_layout"), specs, reader.dir() + "/manifest.json", why);
    if (!layout && o.report) log::warn("convert: not keeping the original safetensors files: {}", why);
  }
  if (!layout) layout = save_pretrained_layout(specs, o.max_shard_size);
  const ShardPlan& plan = layout->plan;

  const fs::path final_dir = fs::path(out).lexically_normal(), tmp = final_dir.string() + ".tmp";
  // Every file's layout, the same on every rank; where each item goes; who writes it.
  std::vector<SafetensorsFilePlan> file_plans;
  for (std::size_t f = 0; f < plan.files.size(); ++f)
    file_plans.push_back(plan_safetensors_file((tmp / plan.files[f]).string(), plan.tensors[f], layout->file_options[f]));
  std::map<std::string, std::size_t> file_of;
  for (std::size_t f = 0; f < plan.files.size(); ++f)
    for (const TensorSpec& s : plan.tensors[f]) file_of[s.name] = f;
  std::vector<std::uint64_t> sizes;
  std::int64_t largest_matrix = 0;
  for (const Item& it : items) {
    sizes.push_back(file_plans[file_of.at(it.name.name)].entry(it.name.name).nbytes());
    if (it.name.transposed)
      largest_matrix = std::max<std::int64_t>(largest_matrix, it.hf_shape[it.hf_shape.size() - 2] * it.hf_shape.back() *
                                                                  static_cast<std::int64_t>(dtype_size(it.written)));
  }
  const std::vector<int> owner = spread_over_ranks(sizes, world.size());
  if (o.report) say_working_set(3, largest_matrix, 2);  // the read piece and its conversion; matrix + transpose

  // Rank 0: refuse an existing output (unless overwriting), create OUT.tmp and every file in it.
  agree(world, [&] {
    if (world.rank() != 0) return;
    if (fs::exists(final_dir) && !o.overwrite)
      fail_config("output directory {} already exists (use --overwrite to replace it)", final_dir.string());
    std::error_code ec;
    fs::remove_all(tmp, ec);
    if (!fs::create_directories(tmp, ec)) fail_config("cannot create {}: {}", tmp.string(), ec.message());
    for (const SafetensorsFilePlan& fp : file_plans) create_safetensors_file(fp);
  });
  auto drop_tmp = [&] {
    if (world.rank() != 0) return;
    std::error_code ec;
    fs::remove_all(tmp, ec);
  };

  Progress prog;
  prog.total_tensors = static_cast<std::uint64_t>(std::count(owner.begin(), owner.end(), world.rank()));
  agree_idle_or(world, [&] {
    std::map<std::size_t, std::unique_ptr<SafetensorsPartWriter>> writers;  // the files this rank writes into
    for (std::size_t i = 0; i < items.size(); ++i) {
      if (owner[i] != world.rank()) continue;
      const std::size_t f = file_of.at(items[i].name.name);
      auto& w = writers[f];
      if (!w) w = std::make_unique<SafetensorsPartWriter>(file_plans[f]);
      export_tensor(reader, items[i], *w, world);
      prog.add(sizes[i]);
    }
    reader.close_files();
    for (auto& [f, w] : writers) w->sync();
  }, drop_tmp);

  // Rank 0: the index, configs and extra files, then OUT.tmp -> OUT.
  agree_idle_or(world, [&] {
    if (world.rank() != 0) return;
    if (!layout->index_text.empty()) write_file_atomic((tmp / kSafetensorsIndexName).string(), layout->index_text, false);
    write_file_atomic((tmp / "config.json").string(), config_json.dump(2) + "\n", false);
    if (reader.has_section("hf_generation_config"))
      write_file_atomic((tmp / "generation_config.json").string(), reader.section("hf_generation_config").dump(2) + "\n", false);
    for (const std::string& f : o.extra_files) {
      std::ifstream src(f, std::ios::binary);
      const std::string bytes((std::istreambuf_iterator<char>(src)), std::istreambuf_iterator<char>());
      write_file_atomic((tmp / fs::path(f).filename()).string(), bytes, false);
    }
    for (const auto& [name, bytes] : o.extra_contents) write_file_atomic((tmp / name).string(), bytes, false);
    fsync_directory(tmp.string());
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
  }, drop_tmp);
  if (o.report) finish_report(world, prog, final_dir.string());
  return 0;
}

namespace {

int h5_to_hf(JobContext& ctx, const std::string& in, const std::string& out) {
  HfExportOptions o;
  o.role = ctx.vm["role"].as<std::string>();
  o.dtype = ctx.vm["dtype"].as<std::string>();
  o.max_shard_size = parse_byte_size(ctx.vm["max-shard-size"].as<std::string>());
  o.keep_layout = ctx.vm["max-shard-size"].defaulted();
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
  set_direct_writes(ctx.vm["direct-io"].as<bool>());
  if (from == "hf" && to == "h5") return hf_to_h5(ctx, in, out);
  if (from == "h5" && to == "hf") return h5_to_hf(ctx, in, out);
  fail_config("convert: --from/--to must be hf/h5 or h5/hf, not {}/{}", from, to);
}

}  // namespace dg
