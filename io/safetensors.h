// safetensors files as Hugging Face reads and writes them (spec/formats.md §1): a validating mmap reader,
// a streaming writer with the reference writer's byte layout, and the sharded layout with
// model.safetensors.index.json.
//
// Reader. SafetensorsFile::open maps the file read-only and runs every check of the reference Rust reader
// (formats.md §1.5, in its order) plus stricter ones; every failure is a dg::ConfigError whose message
// names the file and, where there is one, the tensor:
//   1 file shorter than 8 bytes; 2 header length N > 100,000,000; 3 8 + N past the end of the file;
//   4 header not UTF-8; 5 header not a JSON object of the expected shape (unknown dtype, shape entries
//   that are not non-negative integers, data_offsets not two non-negative integers, a missing field,
//   a __metadata__ that is not a string->string map); 6 offsets, sorted by (begin, end), not starting at
//   0, leaving a gap, overlapping or ending before they begin; 7 element or bit counts overflowing 64 bits;
//   8 a sub-byte tensor that does not fill whole bytes; 9 end - begin != the tensor's byte size;
//   10 the data buffer not ending exactly at the end of the file (trailing bytes and missing bytes alike).
// Stricter than the reference (documented decisions):
//   - a key repeated anywhere in the header (tensor names, tensor fields, __metadata__ keys) is rejected;
//     the reference keeps one copy of a repeated tensor name;
//   - a NUL byte in the header and nesting deeper than 128 levels are rejected (serde_json rejects both;
//     nlohmann would not);
//   - a tensor entry must be a JSON object (serde would also take a [dtype, shape, offsets] array);
//   - a dimension above 2^63 - 1 is rejected (dg::Shape is signed);
//   - unknown fields inside a tensor entry are ignored and `"__metadata__": null` means no metadata,
//     exactly as the reference; leading and trailing JSON whitespace around the header object are accepted.
// Tensors are views into the mapping (valid while the SafetensorsFile lives; the mapping is read-only, so
// never write through them). A view whose address is not aligned to its element size (files from writers
// that do not sort by alignment) is returned as an aligned owned copy instead. dtypes dgemma computes with
// (F32, BF16, F16, I32, I64) come back as dg::Tensor; every other valid safetensors dtype (F64, I8, U8,
// BOOL, F8_*, F4, ...) is listed with its dtype string and bit size and read as raw bytes, so tensors the
// model does not use (the vision tower) are carried through conversion byte for byte.
//
// Writer. SafetensorsWriter plans the whole header from {name, dtype, shape} first (tensors sorted like the
// reference writer: by dtype descending in the reference enum order of §1.3, then by name; packed with no
// gaps; header `{"__metadata__":{"format":"pt"},name:{"dtype":..,"shape":[..],"data_offsets":[b,e]},..}`
// compact, padded with spaces to a multiple of 8), then takes each tensor's bytes in any order from memory
// the caller owns (written in place with pwrite; never the whole model in memory). The file is written as
// `<path>.tmp`, fsynced and renamed when finish() is called (io/atomic_file.h): a failed or abandoned write
// leaves nothing at `path`, and an existing file is never clobbered unless overwrite is asked for.
//
// Sharded files. plan_shards splits tensors into shards the way huggingface_hub does (greedy in the
// caller's order; a tensor larger than the limit gets a shard of its own; one shard -> `model.safetensors`
// and no index), names them `model-00001-of-00003.safetensors`, and builds model.safetensors.index.json
// (metadata.total_size = data bytes, metadata.total_parameters, weight_map; 2-space indent, sorted keys,
// as transformers writes it). ShardedSafetensorsWriter writes the shards, then the index last.
// ShardedSafetensors opens a directory, an index or a single file and validates the set (§1.6).
#pragma once
#include <cstddef>
#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include <nlohmann/json.hpp>

#include "io/direct_write.h"
#include "layers/tensor.h"

namespace dg {

// ---- dtypes -------------------------------------------------------------------------------------------
struct SafetensorsDType {
  std::string_view name;       // "BF16", "F8_E4M3", ...
  int bits;                    // 4, 6, 8, 16, 32 or 64
  int order;                   // position in the reference enum (§1.3); the writer sorts by it, descending
  std::optional<DType> dtype;  // the dgemma DType, for the types dgemma computes with
};
// All 22 dtypes of the reference, in its enum order.
std::span<const SafetensorsDType> safetensors_dtypes();
const SafetensorsDType* find_safetensors_dtype(std::string_view name);  // nullptr when unknown
const SafetensorsDType& safetensors_dtype(DType t);

// ---- what a file holds --------------------------------------------------------------------------------
// A tensor to write: its name, safetensors dtype string and shape.
struct TensorSpec {
  std::string name;
  std::string dtype;  // a safetensors dtype string, e.g. "BF16"
  Shape shape;
  static TensorSpec of(std::string name, const Tensor& t);
};

// One tensor of a file's header, in data order.
struct SafetensorsEntry {
  std::string name;
  std::string dtype;          // the safetensors dtype string, e.g. "BF16" or "F8_E4M3"
  std::optional<DType> type;  // set when dgemma computes with this dtype (F32, BF16, F16, I32, I64)
  int bits = 0;               // element size in bits
  Shape shape;
  std::uint64_t begin = 0, end = 0;  // data_offsets, relative to the start of the data buffer

  std::uint64_t nbytes() const { return end - begin; }
  std::int64_t numel() const { return shape_numel(shape); }
  TensorSpec spec() const { return {name, dtype, shape}; }
};

// The validated header of a safetensors file.
struct SafetensorsHeader {
  std::uint64_t header_size = 0;  // N: the JSON header's length in bytes (the data starts at 8 + N)
  std::optional<std::map<std::string, std::string>> metadata;  // __metadata__, when present
  std::vector<SafetensorsEntry> entries;                        // sorted by data offsets
  std::uint64_t data_size = 0;                                  // bytes of the data buffer
};

// Runs all the reader's checks on the bytes of a whole file; `what` names it in messages.
SafetensorsHeader parse_safetensors(std::span<const std::byte> file, const std::string& what);

// ---- reader -------------------------------------------------------------------------------------------
class SafetensorsFile {
 public:
  static SafetensorsFile open(const std::string& path);

  const std::string& path() const { return path_; }
  const std::vector<SafetensorsEntry>& entries() const { return header_.entries; }  // data order
  const std::optional<std::map<std::string, std::string>>& metadata() const { return header_.metadata; }
  std::uint64_t header_size() const { return header_.header_size; }
  std::uint64_t data_size() const { return header_.data_size; }
  std::uint64_t file_size() const;
  // The header exactly as stored: the N bytes after the length, JSON and its padding.
  std::string_view header_text() const;

  bool contains(std::string_view name) const { return find(name) != nullptr; }
  const SafetensorsEntry* find(std::string_view name) const;  // nullptr when absent
  const SafetensorsEntry& entry(std::string_view name) const;  // ConfigError naming file and tensor
  // The tensor's bytes, any dtype (raw little-endian, row-major, as in the file).
  std::span<const std::byte> bytes(std::string_view name) const;
  // A view (or an aligned copy, see above); ConfigError for dtypes dgemma does not compute with.
  Tensor tensor(std::string_view name) const;
  // Drops the mapped pages of the bytes [begin, end) of tensor `name` from this process's memory (they
  // stay in the page cache and come back on the next access): a reader that streams the model keeps
  // resident only what it works on, not every page it has touched.
  void release(std::string_view name, std::uint64_t begin, std::uint64_t end) const;

 private:
  struct Mapping;
  std::string path_;
  std::shared_ptr<const Mapping> map_;
  SafetensorsHeader header_;
  std::unordered_map<std::string, std::size_t> index_;
};

// ---- writer -------------------------------------------------------------------------------------------
struct SafetensorsWriteOptions {
  bool overwrite = false;  // replace an existing file (atomically, at finish)
  // __metadata__, written as given. transformers refuses a shard whose __metadata__ lacks
  // "format": "pt" (or tf/flax/mlx); nullopt writes no __metadata__ at all (not for HF model dirs).
  std::optional<std::map<std::string, std::string>> metadata = std::map<std::string, std::string>{{"format", "pt"}};
  // Lay the tensors out in the order given instead of the reference writer's sort (reproducing a file
  // whose recorded data order is kept, see io/hf_writer.h).
  bool keep_order = false;
  // The header text to write instead of the generated one (a file from another writer, reproduced byte
  // for byte); the caller guarantees that it describes exactly the planned layout, padding included.
  std::optional<std::string> header = std::nullopt;
};

// The reference writer's layout: entries in file order with their offsets. ConfigError (naming `what` and
// the tensor) for an unknown dtype, a negative dimension, a sub-byte tensor that does not fill whole bytes,
// a repeated name or a tensor named __metadata__.
// keep_order: the given order instead of the reference writer's sort.
std::vector<SafetensorsEntry> plan_safetensors_layout(std::vector<TensorSpec> tensors, const std::string& what,
                                                      bool keep_order = false);
// The header bytes (JSON padded with spaces to a multiple of 8) for a planned layout.
std::string safetensors_header_json(const std::vector<SafetensorsEntry>& layout,
                                    const std::optional<std::map<std::string, std::string>>& metadata);

class SafetensorsWriter {
 public:
  SafetensorsWriter(std::string path, std::vector<TensorSpec> tensors, SafetensorsWriteOptions opts = {});
  ~SafetensorsWriter();  // without finish(): the temporary file is removed
  SafetensorsWriter(const SafetensorsWriter&) = delete;
  SafetensorsWriter& operator=(const SafetensorsWriter&) = delete;

  const std::string& path() const;
  const std::vector<SafetensorsEntry>& layout() const { return layout_; }  // file order
  // One tensor's bytes (exactly its planned size), in any order, each tensor once.
  void write(std::string_view name, const void* data, std::size_t nbytes);
  void write(std::string_view name, const Tensor& t);  // dtype and shape must match the plan
  bool written(std::string_view name) const;
  // Every tensor written: fsync, rename into place, fsync the directory.
  void finish();

 private:
  struct Impl;
  std::unique_ptr<Impl> file_;
  std::vector<SafetensorsEntry> layout_;
  std::unordered_map<std::string, std::size_t> index_;
  std::vector<bool> done_;
  std::uint64_t data_start_ = 0;
};

// One file written by several processes at once (`dgemma convert` spreads a shard's tensors over the
// ranks): every process computes the same plan, one creates the file (the header written, the file sized
// to its final length), then each writes the bytes of its own tensors at their offsets with pwrite and
// syncs them. The bytes are those SafetensorsWriter writes. There is no temporary file: the caller writes
// into a temporary directory that is renamed once every process is done.
struct SafetensorsFilePlan {
  std::string path;
  std::vector<SafetensorsEntry> layout;  // file order, with offsets
  std::string header;                    // the padded JSON header
  std::uint64_t data_start = 0;          // 8 + header.size()
  std::uint64_t file_size() const { return data_start + (layout.empty() ? 0 : layout.back().end); }
  const SafetensorsEntry& entry(std::string_view name) const;  // dg::Error naming the file when absent
};
SafetensorsFilePlan plan_safetensors_file(std::string path, std::vector<TensorSpec> tensors,
                                          const SafetensorsWriteOptions& opts = {});
// Creates the planned file (refusing an existing one): header, then the size.
void create_safetensors_file(const SafetensorsFilePlan& plan);

class SafetensorsPartWriter {
 public:
  explicit SafetensorsPartWriter(const SafetensorsFilePlan& plan);  // opens the created file for writing
  ~SafetensorsPartWriter();
  SafetensorsPartWriter(const SafetensorsPartWriter&) = delete;
  SafetensorsPartWriter& operator=(const SafetensorsPartWriter&) = delete;
  // The bytes [offset, offset + n) of tensor `name` (dg::Error naming file and tensor on an I/O error), with
  // O_DIRECT where the file system allows it (io/direct_write.h).
  void write(std::string_view name, std::uint64_t offset, const void* data, std::size_t n);
  void sync();  // fsync: what this process wrote is on disk

 private:
  const SafetensorsFilePlan& plan_;
  DirectFile file_;
};

// Writes named tensors (any devices) as one file.
void save_safetensors(const std::string& path, const std::vector<std::pair<std::string, Tensor>>& tensors,
                      SafetensorsWriteOptions opts = {});

// ---- sharded files ------------------------------------------------------------------------------------
inline constexpr std::string_view kSafetensorsSingleName = "model.safetensors";
inline constexpr std::string_view kSafetensorsIndexName = "model.safetensors.index.json";

// "5GB" -> 5,000,000,000 (KB/MB/GB/TB are decimal as in huggingface_hub; KiB/MiB/GiB/TiB binary; a plain
// number is bytes). ConfigError otherwise.
std::uint64_t parse_byte_size(std::string_view text);

struct ShardPlan {
  std::vector<std::string> files;                // file names (no directory), in shard order
  std::vector<std::vector<TensorSpec>> tensors;  // per file, in the caller's order
  std::map<std::string, std::string> weight_map;  // tensor name -> file name
  std::uint64_t total_size = 0;                   // data bytes of all tensors
  std::uint64_t total_parameters = 0;             // elements of all tensors (see write_index)
  bool sharded() const { return files.size() > 1; }
};
// huggingface_hub's split_state_dict_into_shards in the caller's tensor order. One shard: the file is
// `model.safetensors` and there is no index.
ShardPlan plan_shards(const std::vector<TensorSpec>& tensors, std::uint64_t max_shard_size);
// The text of model.safetensors.index.json as transformers writes it (indent 2, sorted keys, final
// newline). transformers' total_parameters counts model parameters (not buffers); dgemma's default counts
// the elements of every stored tensor; pass the count to use when it matters.
std::string shard_index_json(const ShardPlan& plan, std::optional<std::uint64_t> total_parameters = {});
// The same with the index's "metadata" object given whole (null: no "metadata" key), as json.dumps(index,
// indent=2, sort_keys=True) + "\n" writes it.
std::string shard_index_json_with_metadata(const ShardPlan& plan, const nlohmann::json& metadata);

// Writes every shard of a plan in `dir` (which must exist), streaming tensor by tensor. finish() commits
// all shards, then the index (removing a stale index first when overwriting), so a set without its index
// is never taken for complete. To spread the work over ranks, compute the same plan everywhere, write
// shard i with SafetensorsWriter(dir + "/" + plan.files[i], plan.tensors[i]) on its rank and the index with
// write_file_atomic(dir + "/" + kSafetensorsIndexName, shard_index_json(plan), ...) after all shards.
class ShardedSafetensorsWriter {
 public:
  ShardedSafetensorsWriter(std::string dir, const std::vector<TensorSpec>& tensors, std::uint64_t max_shard_size,
                           SafetensorsWriteOptions opts = {});
  ~ShardedSafetensorsWriter();
  const ShardPlan& plan() const { return plan_; }
  void write(std::string_view name, const void* data, std::size_t nbytes);
  void write(std::string_view name, const Tensor& t);
  void finish(std::optional<std::uint64_t> total_parameters = {});

 private:
  std::string dir_;
  SafetensorsWriteOptions opts_;
  ShardPlan plan_;
  std::vector<std::unique_ptr<SafetensorsWriter>> shards_;
  std::unordered_map<std::string, std::size_t> shard_of_;
};

// A set of safetensors files read as one: a directory (model.safetensors if present, as transformers
// prefers it, else model.safetensors.index.json), an index file, or a single .safetensors file.
// Checks (ConfigError naming the index, the file and the tensor): the index is strict JSON with a
// weight_map of string -> string (and, if present, a metadata object whose total_size is a non-negative
// integer); shard names are relative paths inside the directory; every listed file exists and is a valid
// safetensors file; every tensor of the weight map is in the file it is mapped to; no tensor is in two
// files. Tensors of a shard that the weight map does not list are readable and reported in warnings(), as
// is a total_size that differs from the summed data bytes (third-party writers disagree on it).
class ShardedSafetensors {
 public:
  static ShardedSafetensors open(const std::string& path);

  const std::string& path() const { return path_; }  // the index or the single file
  bool sharded() const { return index_path_.has_value(); }
  std::vector<std::string> names() const;            // sorted
  bool contains(std::string_view name) const { return find(name) != nullptr; }
  const SafetensorsEntry* find(std::string_view name) const;
  const SafetensorsEntry& entry(std::string_view name) const;  // ConfigError naming the set and tensor
  const SafetensorsFile& file_of(std::string_view name) const;
  std::span<const std::byte> bytes(std::string_view name) const { return file_of(name).bytes(name); }
  Tensor tensor(std::string_view name) const { return file_of(name).tensor(name); }
  void release(std::string_view name, std::uint64_t begin, std::uint64_t end) const {
    file_of(name).release(name, begin, end);
  }

  const std::vector<SafetensorsFile>& files() const { return files_; }
  std::uint64_t total_size() const;  // summed data bytes of all files
  std::optional<std::uint64_t> declared_total_size() const { return declared_total_size_; }
  const std::vector<std::string>& warnings() const { return warnings_; }
  // The index file's text as read (empty for a single file).
  const std::string& index_text() const { return index_text_; }

 private:
  std::string path_;
  std::optional<std::string> index_path_;
  std::vector<SafetensorsFile> files_;
  std::unordered_map<std::string, std::size_t> file_of_;  // tensor name -> files_ index
  std::optional<std::uint64_t> declared_total_size_;
  std::vector<std::string> warnings_;
  std::string index_text_;
};

}  // namespace dg
