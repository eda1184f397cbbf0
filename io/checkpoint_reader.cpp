// CheckpointReader: opens and validates a checkpoint's manifest, then reads any slice of any tensor by
// intersecting it with the saved shards and reading only the overlapping hyperslabs (io/checkpoint.h).
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <optional>
#include <set>
#include <sstream>

#include "io/checkpoint_internal.h"
#include "io/data_check.h"
#include "io/strict_json.h"

namespace dg {

namespace fs = std::filesystem;
using ckpt::Box;
using ckpt::H5Id;

namespace {

// Copies box `in` from `src`, which holds the elements [src_first, ...) of the row-major `src_dims` array,
// into `dst`, which holds the region `dst_region` (row-major).
void copy_box(const char* src, const Shape& src_dims, std::int64_t src_first, char* dst, const Box& dst_region,
              const Box& in, std::size_t esize) {
  const std::size_t n = in.count.size();
  const std::size_t run = static_cast<std::size_t>(in.count[n - 1]) * esize;
  Shape idx = in.offset, rel(n);
  while (true) {
    for (std::size_t d = 0; d < n; ++d) rel[d] = idx[d] - dst_region.offset[d];
    std::memcpy(dst + static_cast<std::size_t>(ckpt::linear_index(rel, dst_region.count)) * esize,
                src + static_cast<std::size_t>(ckpt::linear_index(idx, src_dims) - src_first) * esize, run);
    std::size_t d = n - 1;  // the next index over all but the last dimension
    while (true) {
      if (d == 0) return;
      --d;
      if (++idx[d] < in.offset[d] + in.count[d]) break;
      idx[d] = in.offset[d];
    }
  }
}


// The file offset of a dataset whose bytes lie in its file exactly as in memory (contiguous, allocated,
// unfiltered, not external, stored in the memory type `type`); HADDR_UNDEF otherwise.
haddr_t raw_offset(hid_t ds, hid_t type) {
  H5Id dcpl(H5Dget_create_plist(ds), H5Pclose);
  if (!dcpl.valid() || H5Pget_layout(dcpl.get()) != H5D_CONTIGUOUS || H5Pget_nfilters(dcpl.get()) != 0 ||
      H5Pget_external_count(dcpl.get()) != 0)
    return HADDR_UNDEF;
  H5Id ftype(H5Dget_type(ds), H5Tclose);
  if (!ftype.valid() || H5Tequal(ftype.get(), type) <= 0) return HADDR_UNDEF;
  return H5Dget_offset(ds);
}

// Read-only mappings of one file's byte ranges: a piece of a contiguous dataset read without copying it out
// of the page cache. map() gives nullptr when the range is not inside the file (a damaged file: H5Dread then
// reports it), so that no access can fault.
class RangeMapper {
 public:
  explicit RangeMapper(const std::string& path) : fd_(::open(path.c_str(), O_RDONLY | O_CLOEXEC)) {
    struct stat st {};
    if (fd_ >= 0 && ::fstat(fd_, &st) == 0) size_ = static_cast<std::uint64_t>(st.st_size);
  }
  ~RangeMapper() {
    unmap();
    if (fd_ >= 0) ::close(fd_);
  }
  RangeMapper(const RangeMapper&) = delete;
  RangeMapper& operator=(const RangeMapper&) = delete;

  // The bytes [offset, offset + n) of the file, valid until the next map() (the previous range is unmapped).
  const char* map(std::uint64_t offset, std::size_t n) {
    unmap();
    if (fd_ < 0 || n == 0 || offset > size_ || n > size_ - offset) return nullptr;
    static const std::uint64_t page = static_cast<std::uint64_t>(::sysconf(_SC_PAGESIZE));
    const std::uint64_t base = offset / page * page;
    len_ = n + static_cast<std::size_t>(offset - base);
    void* m = ::mmap(nullptr, len_, PROT_READ, MAP_SHARED | MAP_POPULATE, fd_, static_cast<off_t>(base));
    if (m == MAP_FAILED) return nullptr;
    map_ = m;
    return static_cast<const char*>(m) + (offset - base);
  }

 private:
  void unmap() {
    if (map_ != nullptr) ::munmap(map_, len_);
    map_ = nullptr;
  }
  int fd_ = -1;
  std::uint64_t size_ = 0;
  void* map_ = nullptr;
  std::size_t len_ = 0;
};

}  // namespace

struct CheckpointReader::Impl {
  std::string dir, manifest_path;
  CheckpointManifest m;
  std::map<std::string, H5Id> files;                        // opened lazily, by file name
  std::set<std::pair<std::string, std::string>> checked;    // datasets already validated
  std::set<std::pair<std::string, std::string>> verified;   // datasets whose checksum matched

  bool needs_checksum(const CheckpointShard& s) const {
    return s.checksum.has_value() && !verified.count({s.file, s.dataset});
  }

  // Compares a shard's data hash with the manifest's; remembers a match.
  void check_sum(const CheckpointTensor& t, const CheckpointShard& s, std::uint64_t got) {
    if (!s.checksum) return;
    if (got != *s.checksum)
      fail_config("checkpoint file {}: dataset {} of tensor '{}' (shard {}) is corrupt: its data hashes to {}, but {} "
                  "records {} (checksum mismatch: the file changed after it was written)",
                  path_of(s.file), s.dataset, t.key, s.slice.str(), checksum_string(got), manifest_path,
                  checksum_string(*s.checksum));
    verified.emplace(s.file, s.dataset);
  }

  // Reads a shard's whole dataset in pieces of about 16 MiB (row-major runs of the dataset), hashing it
  // and handing each piece to `visit`; checks the checksum at the end.
  void scan_shard(const CheckpointTensor& t, const CheckpointShard& s, hid_t ds, const ShardVisitor& visit) {
    const std::size_t esize = dtype_size(t.dtype);
    const hid_t type = ckpt::h5_type(t.dtype);
    const Shape dims = s.slice.local_shape();
    const std::int64_t n = s.slice.numel();
    const std::int64_t piece = std::max<std::int64_t>(1, (std::int64_t{16} << 20) / static_cast<std::int64_t>(esize));
    std::vector<char> buf;  // for H5Dread, sized on first use (mapped pieces need none)
    auto buffer = [&] {
      if (buf.empty()) buf.resize(std::max<std::size_t>(esize, static_cast<std::size_t>(std::min(n, piece)) * esize));
      return buf.data();
    };
    auto check = [&](herr_t rc) {
      if (rc < 0)
        fail_config("checkpoint file {}: cannot read dataset {} of tensor '{}' ({})", path_of(s.file), s.dataset, t.key,
                    ckpt::h5_error());
    };
    Xxh64 hash;
    if (dims.empty()) {  // a scalar dataset: its one element
      check(H5Dread(ds, type, H5S_ALL, H5S_ALL, H5P_DEFAULT, buffer()));
      hash.update(buf.data(), esize);
      if (visit) visit(s, 0, buf.data(), 1);
    } else {
      // A contiguous dataset in the memory type is read through mappings of its bytes, a piece at a time (no
      // copy out of the page cache); anything else, or a range outside the file, through H5Dread.
      const haddr_t raw = raw_offset(ds, type);
      std::optional<RangeMapper> mapper;
      if (raw != HADDR_UNDEF) mapper.emplace(path_of(s.file));
      for (std::int64_t at = 0; at < n; at += piece) {
        const std::int64_t len = std::min(piece, n - at);
        const char* mapped =
            mapper ? mapper->map(raw + static_cast<std::uint64_t>(at) * esize, static_cast<std::size_t>(len) * esize)
                   : nullptr;
        if (mapped != nullptr) {
          hash.update(mapped, static_cast<std::size_t>(len) * esize);
          if (visit) visit(s, at, mapped, len);
          continue;
        }
        std::int64_t filled = 0;
        for (const Box& b : ckpt::flat_to_boxes(at, at + len, dims)) {
          H5Id file = ckpt::hyperslab_space(dims, b.offset, b.count);
          H5Id mem = ckpt::hyperslab_space({b.numel()}, {0}, {b.numel()});
          char* dst = buffer() + static_cast<std::size_t>(filled) * esize;
          check(H5Dread(ds, type, mem.get(), file.get(), H5P_DEFAULT, dst));
          filled += b.numel();
        }
        hash.update(buf.data(), static_cast<std::size_t>(len) * esize);
        if (visit) visit(s, at, buf.data(), len);
      }
    }
    check_sum(t, s, hash.digest());
  }

  std::string path_of(const std::string& file) const { return dir + "/" + file; }

  hid_t file(const std::string& name) {
    if (auto it = files.find(name); it != files.end()) return it->second.get();
    const std::string path = path_of(name);
    H5Id fapl = ckpt::make_fapl();
    H5Id f(H5Fopen(path.c_str(), H5F_ACC_RDONLY, fapl.get()), H5Fclose);
    if (!f.valid())
      fail_config("checkpoint file {} cannot be opened as HDF5 ({}): it is damaged, truncated or not a checkpoint file",
                  path, ckpt::h5_error());
    std::string format;
    std::vector<std::int64_t> version, step, rank, world;
    if (!ckpt::read_attr_string(f.get(), "format", format) || format != kCheckpointFormat ||
        !ckpt::read_attr_i64(f.get(), "format_version", version) || version.size() != 1)
      fail_config("checkpoint file {} is not a dgemma checkpoint rank file (no format/format_version attributes)", path);
    if (version[0] != kCheckpointFormatVersion)
      fail_config("checkpoint file {}: format_version {} is not supported (this build reads {})", path, version[0],
                  kCheckpointFormatVersion);
    const auto index = static_cast<std::int64_t>(std::find(m.files.begin(), m.files.end(), name) - m.files.begin());
    if (!ckpt::read_attr_i64(f.get(), "step", step) || !ckpt::read_attr_i64(f.get(), "rank", rank) ||
        !ckpt::read_attr_i64(f.get(), "world_size", world) || step.size() != 1 || rank.size() != 1 ||
        world.size() != 1 || step[0] != m.step || rank[0] != index || world[0] != m.world_size)
      fail_config("checkpoint file {} belongs to another checkpoint (its step/rank/world_size attributes are not "
                  "step {}, rank {}, world_size {} as {} says)",
                  path, m.step, index, m.world_size, manifest_path);
    return files.emplace(name, std::move(f)).first->second.get();
  }

  // Opens a shard's dataset and checks it against the manifest (once per dataset).
  H5Id dataset(const CheckpointTensor& t, const CheckpointShard& s) {
    const hid_t f = file(s.file);
    const std::string path = path_of(s.file);
    H5Id ds(H5Dopen2(f, s.dataset.c_str(), H5P_DEFAULT), H5Dclose);
    if (!ds.valid())
      fail_config("checkpoint file {}: cannot open dataset {} of tensor '{}' ({})", path, s.dataset, t.key,
                  ckpt::h5_error());
    if (checked.count({s.file, s.dataset})) return ds;
    H5Id type(H5Dget_type(ds.get()), H5Tclose);
    if (!type.valid() || H5Tequal(type.get(), ckpt::h5_type(t.dtype)) <= 0)
      fail_config("checkpoint file {}: dataset {} holds {}, but {} says tensor '{}' is {}", path, s.dataset,
                  type.valid() ? ckpt::describe_h5_type(type.get()) : "an unreadable type", manifest_path, t.key,
                  dtype_name(t.dtype));
    H5Id space(H5Dget_space(ds.get()), H5Sclose);
    const int nd = space.valid() ? H5Sget_simple_extent_ndims(space.get()) : -1;
    Shape dims;
    if (nd >= 0 && nd <= 32) {
      std::vector<hsize_t> hd(static_cast<std::size_t>(nd));
      H5Sget_simple_extent_dims(space.get(), hd.data(), nullptr);
      dims.assign(hd.begin(), hd.end());
    }
    if (dims != s.slice.local_shape())
      fail_config("checkpoint file {}: dataset {} has shape {}, but {} says the shard {} of tensor '{}' is {}", path,
                  s.dataset, nd >= 0 ? shape_str(dims) : "?", manifest_path, s.slice.str(), t.key,
                  shape_str(s.slice.local_shape()));
    std::string dt;
    std::vector<std::int64_t> global, where;
    const Shape expect_where = s.slice.flat ? Shape{s.slice.begin, s.slice.end} : s.slice.offset;
    if (!ckpt::read_attr_string(ds.get(), "dtype", dt) || dt != dtype_name(t.dtype) ||
        !ckpt::read_attr_i64(ds.get(), "global_shape", global) || global != t.shape ||
        !ckpt::read_attr_i64(ds.get(), s.slice.flat ? "flat_range" : "global_offset", where) || where != expect_where)
      fail_config("checkpoint file {}: the attributes of dataset {} (dtype, global_shape, {}) do not match tensor '{}' "
                  "{}{} shard {} in {}",
                  path, s.dataset, s.slice.flat ? "flat_range" : "global_offset", t.key, dtype_name(t.dtype),
                  shape_str(t.shape), s.slice.str(), manifest_path);
    checked.emplace(s.file, s.dataset);
    return ds;
  }
};

CheckpointReader::CheckpointReader(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
CheckpointReader::~CheckpointReader() {
  if (impl_) {
    ckpt::H5Quiet quiet;
    impl_.reset();
  }
}
CheckpointReader::CheckpointReader(CheckpointReader&&) noexcept = default;
CheckpointReader& CheckpointReader::operator=(CheckpointReader&&) noexcept = default;

CheckpointReader CheckpointReader::open(const std::string& path) {
  auto impl = std::make_unique<Impl>();
  impl->dir = resolve_checkpoint_dir(path);
  impl->manifest_path = impl->dir + "/manifest.json";
  std::ifstream in(impl->manifest_path, std::ios::binary);
  if (!in) fail_config("cannot read {}", impl->manifest_path);
  std::stringstream text;
  text << in.rdbuf();
  impl->m = CheckpointManifest::from_json(parse_json_strict(text.str(), impl->manifest_path), impl->manifest_path);
  for (const std::string& f : impl->m.files) {
    std::error_code ec;
    if (!fs::is_regular_file(impl->path_of(f), ec))
      fail_config("{}: rank file {} is missing (the checkpoint is incomplete or damaged)", impl->manifest_path,
                  impl->path_of(f));
  }
  return CheckpointReader(std::move(impl));
}

const std::string& CheckpointReader::dir() const { return impl_->dir; }
const CheckpointManifest& CheckpointReader::manifest() const { return impl_->m; }
bool CheckpointReader::has(const std::string& key) const { return impl_->m.tensors.count(key) > 0; }

const CheckpointTensor& CheckpointReader::tensor(const std::string& key) const {
  const auto it = impl_->m.tensors.find(key);
  if (it == impl_->m.tensors.end()) fail_config("{}: the checkpoint has no tensor '{}'", impl_->manifest_path, key);
  return it->second;
}

void CheckpointReader::expect(const std::string& key, const Shape& shape, DType dtype) const {
  const CheckpointTensor& t = tensor(key);
  if (t.shape != shape || t.dtype != dtype)
    fail_config("{}: tensor '{}' is {}{} in the checkpoint, expected {}{}", impl_->manifest_path, key,
                dtype_name(t.dtype), shape_str(t.shape), dtype_name(dtype), shape_str(shape));
}

bool CheckpointReader::has_section(const std::string& name) const { return impl_->m.sections.contains(name); }
const nlohmann::json& CheckpointReader::section(const std::string& name) const {
  if (!has_section(name)) fail_config("{}: the checkpoint has no section \"{}\"", impl_->manifest_path, name);
  return impl_->m.sections[name];
}
const nlohmann::json& CheckpointReader::rank_section(const std::string& name) const {
  if (!impl_->m.rank_sections.contains(name))
    fail_config("{}: the checkpoint has no rank section \"{}\"", impl_->manifest_path, name);
  return impl_->m.rank_sections[name];
}

void CheckpointReader::read(const std::string& key, const Slice& slice, Tensor& out) {
  const CheckpointTensor& t = tensor(key);
  check_slice(slice, t.shape, fmt::format("{}: reading tensor '{}' {}", impl_->manifest_path, key, shape_str(t.shape)));
  DG_CHECK(out.is_cpu(), "checkpoint read of '{}' into {}: host memory only", key, out.describe());
  if (out.dtype() != t.dtype)
    fail("checkpoint tensor '{}' is {}; read it into a {} tensor or use read_as() to convert", key,
         dtype_name(t.dtype), dtype_name(t.dtype));
  DG_CHECK(out.numel() == slice.numel(), "checkpoint read of '{}' {}: {} holds {} elements", key, slice.str(),
           out.describe(), out.numel());
  if (slice.numel() == 0) return;

  ckpt::H5Quiet quiet;
  const std::size_t esize = dtype_size(t.dtype);
  const hid_t type = ckpt::h5_type(t.dtype);
  char* const out_base = static_cast<char*>(out.raw());
  if (t.shape.empty()) {  // a 0-d tensor: the one shard holding its element (scalar or [1] dataset)
    for (const CheckpointShard& s : t.shards) {
      if (s.slice.numel() == 0) continue;
      H5Id ds = impl_->dataset(t, s);
      if (H5Dread(ds.get(), type, H5S_ALL, H5S_ALL, H5P_DEFAULT, out_base) < 0)
        fail_config("checkpoint file {}: cannot read dataset {} of tensor '{}' ({})", impl_->path_of(s.file), s.dataset,
                    key, ckpt::h5_error());
      if (impl_->needs_checksum(s)) impl_->check_sum(t, s, xxh64(out_base, esize));  // the whole dataset
    }
    return;
  }
  struct Region {
    Box box;
    std::int64_t first;  // its first element's index in `out`
  };
  std::vector<Region> wanted;
  std::int64_t at = 0;
  for (Box& b : ckpt::slice_boxes(slice, t.shape)) {
    const std::int64_t n = b.numel();
    wanted.push_back({std::move(b), at});
    at += n;
  }

  const Box whole{Shape(t.shape.size(), 0), t.shape};
  for (const CheckpointShard& s : t.shards) {
    H5Id ds;
    const std::string path = impl_->path_of(s.file);
    // Checksum, the first time a read touches this shard: hashed in `out` when the shard lands there as one
    // row-major run (`in_place`: its first element's index in `out`), else by a separate whole read.
    const std::vector<Box> pieces = ckpt::slice_boxes(s.slice, t.shape);
    bool verify = impl_->needs_checksum(s) && !pieces.empty();
    std::int64_t in_place = -1;
    if (verify) {
      for (const Region& q : wanted) {
        bool inside = true;
        for (const Box& p : pieces) {
          Box common;
          inside = inside && ckpt::intersect(q.box, p, common) && common.count == p.count;
        }
        const bool run = s.slice.flat ? ckpt::contiguous_in(q.box, whole) : ckpt::contiguous_in(pieces[0], q.box);
        if (!inside || !run) continue;
        Shape rel(pieces[0].offset.size());
        for (std::size_t d = 0; d < rel.size(); ++d) rel[d] = pieces[0].offset[d] - q.box.offset[d];
        in_place = q.first + ckpt::linear_index(rel, q.box.count);
        break;
      }
    }
    auto check = [&](herr_t rc) {
      if (rc < 0)
        fail_config("checkpoint file {}: cannot read dataset {} of tensor '{}' ({})", path, s.dataset, key,
                    ckpt::h5_error());
    };
    for (const Box& p : pieces) {
      for (const Region& q : wanted) {
        Box in;
        if (!ckpt::intersect(q.box, p, in)) continue;
        if (!ds.valid()) ds = impl_->dataset(t, s);
        if (verify && in_place < 0) {  // the whole shard, once, before its first use
          impl_->scan_shard(t, s, ds.get(), {});
          verify = false;
        }
        Shape mem_start(in.offset.size());
        for (std::size_t d = 0; d < mem_start.size(); ++d) mem_start[d] = in.offset[d] - q.box.offset[d];
        H5Id mem = ckpt::hyperslab_space(q.box.count, mem_start, in.count);
        char* dst = out_base + static_cast<std::size_t>(q.first) * esize;
        const std::int64_t first = ckpt::linear_index(in.offset, t.shape);
        if (!s.slice.flat) {  // N-d dataset of the shard's box
          Shape file_start(in.offset.size());
          for (std::size_t d = 0; d < file_start.size(); ++d) file_start[d] = in.offset[d] - s.slice.offset[d];
          H5Id file = ckpt::hyperslab_space(s.slice.count, file_start, in.count);
          check(H5Dread(ds.get(), type, mem.get(), file.get(), H5P_DEFAULT, dst));
        } else if (ckpt::contiguous_in(in, p)) {  // one run of the 1-d dataset, scattered into place
          H5Id file = ckpt::hyperslab_space({s.slice.numel()}, {first - s.slice.begin}, {in.numel()});
          check(H5Dread(ds.get(), type, mem.get(), file.get(), H5P_DEFAULT, dst));
        } else {  // the covering run, then the box out of it
          Shape last(in.offset.size());
          for (std::size_t d = 0; d < last.size(); ++d) last[d] = in.offset[d] + in.count[d] - 1;
          const std::int64_t n = ckpt::linear_index(last, t.shape) - first + 1;
          std::vector<char> tmp(static_cast<std::size_t>(n) * esize);
          H5Id file = ckpt::hyperslab_space({s.slice.numel()}, {first - s.slice.begin}, {n});
          H5Id all = ckpt::hyperslab_space({n}, {0}, {n});
          check(H5Dread(ds.get(), type, all.get(), file.get(), H5P_DEFAULT, tmp.data()));
          copy_box(tmp.data(), t.shape, first, dst, q.box, in, esize);
        }
      }
    }
    if (verify && in_place >= 0)  // every piece of the shard was read above, into one run of `out`
      impl_->check_sum(t, s, xxh64(out_base + static_cast<std::size_t>(in_place) * esize,
                                   static_cast<std::size_t>(s.slice.numel()) * esize));
  }
}

Tensor CheckpointReader::read(const std::string& key, const Slice& slice) {
  Tensor out = Tensor::empty(slice.local_shape(), tensor(key).dtype);
  read(key, slice, out);
  return out;
}

Tensor CheckpointReader::read_as(const std::string& key, const Slice& slice, DType dtype) {
  const DType saved = tensor(key).dtype;
  if (saved != dtype && !(is_float(saved) && is_float(dtype)))
    fail_config("{}: tensor '{}' is {} in the checkpoint and cannot be converted to {}", impl_->manifest_path, key,
                dtype_name(saved), dtype_name(dtype));
  Tensor raw = read(key, slice);
  return saved == dtype ? raw : raw.to(dtype);
}

void CheckpointReader::verify(bool data) {
  ckpt::H5Quiet quiet;
  for (const std::string& f : impl_->m.files) impl_->file(f);
  for (const auto& [key, t] : impl_->m.tensors)
    for (const CheckpointShard& s : t.shards) impl_->dataset(t, s);
  if (data)
    for (const auto& [key, t] : impl_->m.tensors) verify_tensor(key);
}

void CheckpointReader::verify_tensor(const std::string& key, const ShardVisitor& visit) {
  const CheckpointTensor& t = tensor(key);
  ckpt::H5Quiet quiet;
  for (const CheckpointShard& s : t.shards) {
    H5Id ds = impl_->dataset(t, s);
    if (visit || impl_->needs_checksum(s)) impl_->scan_shard(t, s, ds.get(), visit);
  }
}

bool CheckpointReader::has_checksums() const {
  for (const auto& [key, t] : impl_->m.tensors)
    for (const CheckpointShard& s : t.shards)
      if (!s.checksum) return false;
  return true;
}

void CheckpointReader::close_files() {
  ckpt::H5Quiet quiet;
  impl_->files.clear();
}

}  // namespace dg
