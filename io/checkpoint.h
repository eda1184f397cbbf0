// Sharded training checkpoints (DESIGN.md "Checkpoints", spec/formats.md §4): one HDF5 file per rank plus
// a JSON manifest written last; saved on one mesh, loaded on any other by hyperslab intersection.
//
// On disk
//   ckpt_dir/
//     latest                      text "step_00001000\n": the last committed checkpoint
//     step_00001000/              a complete checkpoint (it has a manifest.json; it is never a *.tmp)
//       manifest.json             written last, by rank 0
//       rank_00000.h5 ...         one file per rank of the writing world, all of them present
//     step_00002000.tmp/          a save in progress or one that crashed: never read, replaced by the next
//                                 save of that step
//   Step directories are `step_` + at least 8 decimal digits ({:08d}); rank files `rank_` + {:05d} + `.h5`.
//
// Tensors are named by keys, '/'-separated paths whose first component is the role and the rest the native
// parameter name (dots kept): "param/model.layers.3.moe.experts.down_projs", "master/...", "exp_avg/...",
// "exp_avg_sq/..." (formats.md §4.6; other roles are free-form). Key characters: [A-Za-z0-9_.-] and '/',
// no empty, "." or ".." component. In a rank file a shard is the dataset "/<key>" (HDF5 groups = roles),
// "/<key>#1", "#2", ... when one rank holds several shards of one key; the manifest names each shard's
// dataset, so readers never rely on that rule.
//
// A shard is a Slice of the global (row-major) tensor:
//   box   offset[d] + count[d] per dimension (whole tensor, dim-0 split, any sub-box); the dataset has the
//         box's shape;
//   flat  elements [begin, end) of the row-major flattening of the global tensor (ZeRO/FSDP slices of a
//         flat buffer, which may start and end mid-row); the dataset is 1-D of end - begin elements.
// For every tensor the shards of all ranks must tile the global tensor exactly: no gap, no overlap (a
// tensor replicated over ranks is added by one of them only, the lowest: "replica 0"). A zero-size tensor
// needs no shard. A 0-d tensor (shape [], one element) is a box with empty offset/count (a scalar
// dataset) or the flat range [0, 1).
//
// Datasets: contiguous, no compression, no fill. f32/i32/i64 as H5T_IEEE_F32LE / H5T_STD_I32LE /
// H5T_STD_I64LE; bf16 as an HDF5 custom float (copy of F32LE with sign bit 15, exponent bits 7..14,
// mantissa bits 0..6, size 2, precision 16, bias 127: HDF5 2.0's H5T_FLOAT_BFLOAT16LE layout), f16 as a
// custom float with fields 15/10/5/0/10 and bias 15 (= IEEE binary16), so h5dump prints both as numbers.
// Dataset attributes: dtype ("f32", "bf16", ...), global_shape (i64[]), and global_offset (i64[], box) or
// flat_range (i64[2], flat). File attributes: format ("dgemma-checkpoint"), format_version, step, rank,
// world_size. Files: 1 MiB alignment for objects >= 1 MiB, HDF5 file locking off (network file systems).
//
// manifest.json (CheckpointManifest::dump: keys sorted, 2-space indent, a value on one line when it fits):
//   {
//     "dgemma_version": "0.1.0",
//     "files": ["rank_00000.h5", "rank_00001.h5"],
//     "format": "dgemma-checkpoint",
//     "format_version": 1,
//     "rank_sections": {"data_cursor": [{"offset": 0}, {"offset": 10}]},
//     "sections": {"mesh": {"world": 2}, "schedule": {...}, "rng": {...}, "config": {...}},
//     "step": 1000,
//     "tensors": {
//       "master/model.norm.weight": {
//         "dtype": "f32",
//         "shape": [2816],
//         "shards": [
//           {"checksum": "xxh64:4c1ef0e79d0c6a2b", "dataset": "/master/model.norm.weight", "file": "rank_00000.h5", "flat": [0, 1408]},
//           {"checksum": "xxh64:9a03b7d2c51e8f40", "dataset": "/master/model.norm.weight", "file": "rank_00001.h5", "flat": [1408, 2816]}
//         ]
//       },
//       "param/model.layers.0.moe.experts.down_projs": {
//         "dtype": "bf16",
//         "shape": [128, 704, 2816],
//         "shards": [
//           {"checksum": "xxh64:...", "count": [64, 704, 2816], "dataset": "/param/model.layers.0.moe.experts.down_projs", "file": "rank_00000.h5", "offset": [0, 0, 0]},
//           {"checksum": "xxh64:...", "count": [64, 704, 2816], "dataset": "/param/model.layers.0.moe.experts.down_projs", "file": "rank_00001.h5", "offset": [64, 0, 0]}
//         ]
//       }
//     },
//     "world_size": 2
//   }
// `sections` are free-form JSON the trainer sets once (any rank; ranks that set the same name must agree);
// `rank_sections` hold one value per writing rank (null where a rank set none).
//
// Checksums: each shard's "checksum" is "xxh64:" + 16 hex digits, the XXH64 (seed 0, io/data_check.h) of
// the dataset's bytes as written: its elements in row-major order of the dataset's shape, little-endian,
// in the stored dtype (= the bytes the writer was given). The field is optional and format_version stays 1:
// checkpoints written before checksums existed load as before, unverified (inspect --verify says so).
// Verification cost: a reader checks each shard once, the first time a read() touches it. When the read
// lands the whole shard contiguously in `out` (whole-tensor reads, and any read whose region holds the
// shard as one row-major run, e.g. the same dim-0 split as saved) the bytes read are hashed in place: no
// extra I/O. Otherwise the shard is read once more, whole, in 16 MiB pieces (a rank resharding onto
// another mesh reads each shard it touches twice; the second pass usually hits the page cache). Hashing
// runs at ~10 GB/s. A mismatch is a ConfigError naming the rank file, the dataset and the tensor.
//
// Save protocol (formats.md §4.4), CheckpointWriter:
//   construct (collective)  rank 0 refuses an existing step_N (ConfigError, nothing touched) unless
//                           overwrite, removes a stale step_N.tmp, creates step_N.tmp/; every rank creates
//                           its rank file there;
//   add (local)             writes one shard straight from the caller's host memory;
//   commit (collective)     every rank closes and fsyncs its file; rank 0 gathers every rank's shard list,
//                           checks it (same shape/dtype on every rank, exact tiling), writes manifest.json
//                           (temp + fsync + rename), fsyncs the directory, renames step_N.tmp -> step_N
//                           (with overwrite: an atomic exchange with the old step_N, which is then
//                           removed), fsyncs ckpt_dir and then rewrites `latest` atomically (to this
//                           step, whatever it held before, unless update_latest is false).
// A crash at any point leaves either the previous state or a *.tmp directory that loaders ignore; `latest`
// never names an incomplete checkpoint. An error on any rank fails every rank's call with the same
// message (ConfigError if it was one), so ranks stay in step; a failed commit removes step_N.tmp. A rank
// whose add() threw should still call commit() (which then fails everywhere) or abort the job. A writer
// destroyed without commit() leaves its *.tmp behind (no collective call in a destructor).
//
// Load, CheckpointReader (per rank, no communication): open() takes a step directory or a ckpt_dir (then
// `latest`, or without it the highest complete step). It parses and validates the manifest and checks that
// every listed rank file exists; every problem is a ConfigError naming the file and the field or tensor:
// unknown format or format_version, unknown dtype, bad shapes or slices, shards that do not tile a tensor
// (gap or overlap), a missing rank file. read(key, slice, out) intersects the requested slice with the
// saved shards and reads only the overlapping hyperslabs of the files that hold them, straight into `out`
// (a flat shard that a box request cuts across rows is read through one covering range, then copied).
// Each dataset is checked when first opened against the manifest (dims, exact HDF5 type, dtype
// attribute), and its data against the shard's checksum when first read (see "Checksums" above); an
// unreadable, truncated, foreign or corrupt rank file is a ConfigError naming it. Reads are
// bit-exact: no HDF5 type conversion happens (read_as() converts floats explicitly afterwards).
//
// HDF5 is not thread-safe in this build: one thread per process may use writers and readers.
#pragma once
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

#include "io/direct_write.h"
#include "layers/tensor.h"

namespace dg {

// The ranks that save one checkpoint together, as io/ sees them. io/ never communicates: it asks the
// group for agreement and for the gathered shard lists, and the job answers over its communicator
// (jobs/checkpoint_group.h).
class CheckpointGroup {
 public:
  virtual ~CheckpointGroup() = default;
  virtual int rank() const = 0;
  virtual int size() const = 0;
  // Runs fn on every rank; if it threw anywhere, every rank throws the lowest failing rank's error (a
  // ConfigError stays one), so that all ranks leave the call together.
  virtual void agree(const std::function<void()>& fn) = 0;
  // Every rank's string, on rank 0 (empty elsewhere).
  virtual std::vector<std::string> gather_to_root(const std::string& mine) = 0;
};

inline constexpr int kCheckpointFormatVersion = 1;
inline constexpr std::string_view kCheckpointFormat = "dgemma-checkpoint";

// "<role>/<name>", e.g. checkpoint_key("master", "model.norm.weight").
std::string checkpoint_key(std::string_view role, std::string_view name);

// A piece of a global tensor: a box or a flat element range (see above).
struct Slice {
  bool flat = false;
  Shape offset, count;              // box: one entry per dimension
  std::int64_t begin = 0, end = 0;  // flat: [begin, end) of the row-major flattening

  static Slice box(Shape offset, Shape count);
  static Slice whole(const Shape& global);
  static Slice rows(const Shape& global, std::int64_t begin, std::int64_t end);  // dim-0 range, rest whole
  static Slice range(std::int64_t begin, std::int64_t end);                      // flat

  std::int64_t numel() const;
  Shape local_shape() const;  // box: count; flat: {end - begin}
  std::string str() const;    // "[0:4, 0:16]" or "flat[100:200]"
  bool operator==(const Slice&) const = default;
};

// Throws ConfigError "<what>: <problem>" unless `s` lies inside a tensor of shape `global`.
void check_slice(const Slice& s, const Shape& global, const std::string& what);

// ---- manifest -------------------------------------------------------------------------------------------
struct CheckpointShard {
  std::string file;     // "rank_00003.h5"
  std::string dataset;  // "/param/model.norm.weight"
  Slice slice;
  std::optional<std::uint64_t> checksum;  // XXH64 of the dataset's bytes; absent in older checkpoints
};

struct CheckpointTensor {
  std::string key;
  Shape shape;
  DType dtype = DType::F32;
  std::vector<CheckpointShard> shards;
};

struct CheckpointManifest {
  int format_version = kCheckpointFormatVersion;
  std::int64_t step = 0;
  int world_size = 1;
  std::string dgemma_version;
  std::vector<std::string> files;                  // index = writing rank
  std::map<std::string, CheckpointTensor> tensors;  // by key
  nlohmann::json sections = nlohmann::json::object();
  nlohmann::json rank_sections = nlohmann::json::object();  // name -> array of world_size values

  nlohmann::json to_json() const;
  // The manifest.json text: 2-space indented, keys sorted, a value kept on one line when it fits in 160
  // columns (so a shard is one line unless its names are long).
  std::string dump() const;
  // Parses and validates everything but the files themselves; ConfigError "<what>: ..." on any problem.
  static CheckpointManifest from_json(const nlohmann::json& j, const std::string& what);
  // Exact tiling of every tensor by its shards, slices in range, files known, datasets unique.
  void validate(const std::string& what) const;
};

// ---- directories ----------------------------------------------------------------------------------------
std::string checkpoint_step_name(std::int64_t step);                          // "step_00001000"
std::string checkpoint_step_dir(const std::string& ckpt_dir, std::int64_t step);  // ckpt_dir/step_00001000
// Steps of the complete checkpoints (step_N directories holding a manifest.json), ascending.
std::vector<std::int64_t> list_checkpoint_steps(const std::string& ckpt_dir);
// The step `latest` names (ConfigError when it is malformed or names no complete checkpoint); without a
// `latest` file the highest complete step; nullopt when there is none (or no ckpt_dir: a fresh start).
std::optional<std::int64_t> latest_checkpoint_step(const std::string& ckpt_dir);
// A step directory as given, or the latest checkpoint of a ckpt_dir. ConfigError when there is none.
std::string resolve_checkpoint_dir(const std::string& path);

// ---- writing --------------------------------------------------------------------------------------------
struct CheckpointWriterOptions {
  bool overwrite = false;      // replace a complete step_N of the same step
  bool update_latest = true;   // point `latest` at this checkpoint after the commit
};

class CheckpointWriter {
 public:
  // Collective over `group` (the ranks that save; it must outlive the writer).
  CheckpointWriter(CheckpointGroup& group, std::string ckpt_dir, std::int64_t step, CheckpointWriterOptions opts = {});
  ~CheckpointWriter();
  CheckpointWriter(const CheckpointWriter&) = delete;
  CheckpointWriter& operator=(const CheckpointWriter&) = delete;

  // Writes this rank's shard `slice` of the tensor `key` (global shape, dtype) from `data`: the slice's
  // elements, row-major, in host memory. dg::Error on a bad key/slice or an I/O failure.
  void add(const std::string& key, const Shape& global_shape, DType dtype, const Slice& slice, const void* data);
  // Same, from a CPU tensor holding slice.numel() elements (any shape) of its dtype.
  void add(const std::string& key, const Shape& global_shape, const Slice& slice, const Tensor& local);
  // The whole tensor from this rank.
  void add(const std::string& key, const Tensor& whole) { add(key, whole.shape(), Slice::whole(whole.shape()), whole); }
  // The whole tensor `key` from this rank, streamed: fill(first, count, dst) puts its elements
  // [first, first + count) (row-major) into dst; it is called for [0, piece), [piece, 2 piece), ... in
  // order (the last piece shorter), so that memory holds one piece (piece elements), not the tensor. The
  // file and checksum are the same as add() of the whole tensor writes. A tensor of kDirectPieceBytes or
  // more goes past HDF5 into its dataset's allocated extent with O_DIRECT (io/direct_write.h).
  static constexpr std::size_t kDirectPieceBytes = 64u << 10;
  using PieceFill = std::function<void(std::int64_t first, std::int64_t count, void* dst)>;
  void add_pieces(const std::string& key, const Shape& shape, DType dtype, std::int64_t piece, const PieceFill& fill);

  void set_section(const std::string& name, nlohmann::json value);
  void set_rank_section(const std::string& name, nlohmann::json value);
  // Records a failure of this rank's part of the save that happened outside add() (e.g. reading what it was
  // to write): commit() then fails on every rank with this message, as after a failed add(). The first
  // failure is kept.
  void record_failure(const std::string& why);

  // Collective: publishes the checkpoint (see the protocol above); returns ckpt_dir/step_N.
  std::string commit();

  const std::string& temp_dir() const { return tmp_dir_; }
  const std::string& final_dir() const { return final_dir_; }

 private:
  struct LocalShard;
  // Writes the data of the created dataset and returns its checksum.
  using DataWriter = std::function<std::uint64_t(std::int64_t dataset, std::int64_t type)>;
  void write_shard(const std::string& key, const Shape& global_shape, DType dtype, const Slice& slice,
                   const DataWriter& data);
  CheckpointGroup& group_;
  std::string ckpt_dir_, final_dir_, tmp_dir_, file_name_;
  std::int64_t step_;
  CheckpointWriterOptions opts_;
  std::int64_t file_ = -1;  // hid_t of this rank's file
  bool done_ = false;
  std::string failed_;  // the first add() error on this rank, reported by commit() on every rank
  std::vector<LocalShard> shards_;
  std::map<std::string, int> shards_per_key_;
  std::unique_ptr<DirectFile> direct_;  // this rank's file, for add_pieces' large tensors (opened on first use)
  nlohmann::json sections_ = nlohmann::json::object(), rank_sections_ = nlohmann::json::object();
};

// Closes every HDF5 object still open (a file a failed write could not close) while MPI is still up: the
// process calls it before MPI_Finalize, so HDF5's own shutdown never runs against a finalised MPI.
void close_checkpoint_library();

// ---- reading --------------------------------------------------------------------------------------------
class CheckpointReader {
 public:
  // A step directory or a ckpt_dir (resolved through `latest`). Validates the manifest (see above).
  static CheckpointReader open(const std::string& path);
  ~CheckpointReader();
  CheckpointReader(CheckpointReader&&) noexcept;
  CheckpointReader& operator=(CheckpointReader&&) noexcept;

  const std::string& dir() const;
  const CheckpointManifest& manifest() const;
  std::int64_t step() const { return manifest().step; }

  bool has(const std::string& key) const;
  const CheckpointTensor& tensor(const std::string& key) const;  // ConfigError naming key and manifest
  // ConfigError unless `key` exists with this global shape and dtype (e.g. a checkpoint of another model).
  void expect(const std::string& key, const Shape& shape, DType dtype) const;
  bool has_section(const std::string& name) const;
  const nlohmann::json& section(const std::string& name) const;       // ConfigError when absent
  const nlohmann::json& rank_section(const std::string& name) const;  // the array over the writing ranks

  // Reads `slice` of `key` into `out`: a CPU tensor of the saved dtype holding slice.numel() elements
  // (any shape; filled row-major). The slice may cut across saved shards in any way.
  void read(const std::string& key, const Slice& slice, Tensor& out);
  Tensor read(const std::string& key, const Slice& slice);  // shaped slice.local_shape()
  // Reads in the saved dtype and converts to `dtype` (float types only; bf16/f16 -> f32 is exact).
  Tensor read_as(const std::string& key, const Slice& slice, DType dtype);

  // Opens every rank file and checks every dataset the manifest names (shape, type, attributes); with
  // `data`, also reads every shard whole and checks its checksum (verify_tensor of every tensor).
  void verify(bool data = false);
  // Pieces of a shard's data as verify_tensor reads them: `n` elements of the shard's dataset starting at
  // its element `first` (row-major in the dataset's shape), in the stored dtype.
  using ShardVisitor =
      std::function<void(const CheckpointShard& shard, std::int64_t first, const void* data, std::int64_t n)>;
  // Reads every shard of `key` whole (in 16 MiB pieces), checks its checksum when the manifest has one and
  // hands the pieces to `visit` (optional). ConfigError naming the file, the dataset and the tensor.
  void verify_tensor(const std::string& key, const ShardVisitor& visit = {});
  // True when every shard of the manifest has a checksum (false for checkpoints of older builds).
  bool has_checksums() const;
  void close_files();  // releases open HDF5 files (reopened when needed)

 private:
  struct Impl;
  explicit CheckpointReader(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace dg
