// CheckpointWriter: every rank writes its shards into its own HDF5 file under step_N.tmp/, then rank 0
// gathers the shard lists, writes manifest.json last and publishes the directory atomically
// (formats.md §4.4; the protocol is described in io/checkpoint.h).
#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <functional>
#include <memory>

#include "io/atomic_file.h"
#include "io/checkpoint_internal.h"
#include "io/data_check.h"

namespace dg {

namespace fs = std::filesystem;
using nlohmann::json;
using ckpt::H5Id;

struct CheckpointWriter::LocalShard {
  std::string key;
  Shape shape;
  DType dtype;
  std::string dataset;
  Slice slice;
  std::uint64_t checksum;  // XXH64 of the bytes written
};

namespace {

// ---- durability -----------------------------------------------------------------------------------------
void fsync_file(const std::string& path) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) fail("cannot open {} to fsync it: {}", path, std::strerror(errno));
  const int rc = ::fsync(fd), e = errno;
  ::close(fd);
  if (rc != 0) fail("cannot fsync {}: {}", path, std::strerror(e));
}

void fsync_dir(const std::string& dir) {  // some file systems refuse fsync on a directory: not an error
  const int fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) return;
  ::fsync(fd);
  ::close(fd);
}

void remove_tree_quietly(const std::string& dir) {
  std::error_code ec;
  fs::remove_all(dir, ec);
}

// step_N.tmp -> step_N. Without `replace` an existing step_N is never touched; with it the old one is
// swapped out in one step (RENAME_EXCHANGE) and then removed.
void publish_dir(const std::string& tmp, const std::string& final_dir, bool replace) {
  std::error_code ec;
  const bool exists = fs::exists(final_dir, ec);
  if (exists && !replace)
    fail_config("checkpoint {} appeared while this one was being written (not overwriting it)", final_dir);
  if (!exists) {
    if (::renameat2(AT_FDCWD, tmp.c_str(), AT_FDCWD, final_dir.c_str(), RENAME_NOREPLACE) == 0) return;
    if (errno == EEXIST || errno == ENOTEMPTY)
      fail_config("checkpoint {} appeared while this one was being written (not overwriting it)", final_dir);
    if (errno != EINVAL && errno != ENOSYS && errno != ENOTSUP)
      fail("cannot rename {} to {}: {}", tmp, final_dir, std::strerror(errno));
    if (::rename(tmp.c_str(), final_dir.c_str()) != 0)  // no RENAME_NOREPLACE here: checked just above
      fail("cannot rename {} to {}: {}", tmp, final_dir, std::strerror(errno));
    return;
  }
  if (::renameat2(AT_FDCWD, tmp.c_str(), AT_FDCWD, final_dir.c_str(), RENAME_EXCHANGE) == 0) {
    remove_tree_quietly(tmp);  // the old checkpoint now sits at the .tmp name
    return;
  }
  if (errno != EINVAL && errno != ENOSYS && errno != ENOTSUP)
    fail("cannot exchange {} with {}: {}", tmp, final_dir, std::strerror(errno));
  const std::string old = final_dir + ".old";  // not a step name: loaders ignore it
  remove_tree_quietly(old);
  if (::rename(final_dir.c_str(), old.c_str()) != 0)
    fail("cannot move the old {} aside: {}", final_dir, std::strerror(errno));
  if (::rename(tmp.c_str(), final_dir.c_str()) != 0)
    fail("cannot rename {} to {}: {}", tmp, final_dir, std::strerror(errno));
  remove_tree_quietly(old);
}

}  // namespace

// ---- CheckpointWriter -----------------------------------------------------------------------------------
CheckpointWriter::CheckpointWriter(CheckpointGroup& group, std::string ckpt_dir, std::int64_t step, CheckpointWriterOptions opts)
    : group_(group), ckpt_dir_(std::move(ckpt_dir)), step_(step), opts_(opts) {
  DG_CHECK(step >= 0, "negative checkpoint step {}", step);
  final_dir_ = checkpoint_step_dir(ckpt_dir_, step_);
  tmp_dir_ = final_dir_ + ".tmp";
  file_name_ = ckpt::rank_file_name(group_.rank());
  group_.agree([&] {
    if (group_.rank() != 0) return;
    std::error_code ec;
    if (fs::exists(final_dir_, ec) && !opts_.overwrite)
      fail_config("checkpoint {} already exists (not overwriting it; remove it or save with overwrite)", final_dir_);
    fs::create_directories(ckpt_dir_, ec);
    if (ec) fail_config("cannot create checkpoint directory {}: {}", ckpt_dir_, ec.message());
    fs::remove_all(tmp_dir_, ec);  // a stale save of this step
    if (ec) fail("cannot remove the stale {}: {}", tmp_dir_, ec.message());
    if (!fs::create_directory(tmp_dir_, ec) || ec)
      fail_config("cannot create {}: {}", tmp_dir_, ec ? ec.message() : "it exists");
  });
  try {
    group_.agree([&] {
      ckpt::H5Quiet quiet;
      const std::string path = tmp_dir_ + "/" + file_name_;
      H5Id fapl = ckpt::make_fapl();
      file_ = H5Fcreate(path.c_str(), H5F_ACC_EXCL, H5P_DEFAULT, fapl.get());
      if (file_ < 0)
        fail("cannot create {}: {} (is the checkpoint directory on a file system every rank shares?)", path,
             ckpt::h5_error());
      ckpt::write_attr_string(file_, "format", std::string(kCheckpointFormat));
      ckpt::write_attr_i64(file_, "format_version", {kCheckpointFormatVersion}, true);
      ckpt::write_attr_i64(file_, "step", {step_}, true);
      ckpt::write_attr_i64(file_, "rank", {group_.rank()}, true);
      ckpt::write_attr_i64(file_, "world_size", {group_.size()}, true);
    });
  } catch (...) {
    if (file_ >= 0) H5Fclose(file_);
    throw;
  }
}

// A partial checkpoint file that could not be written (disk full) is emptied before HDF5 closes it: a
// close whose final flush fails leaves the file half-open inside HDF5, and HDF5's own shutdown then crashes
// on it. With its blocks freed the close can flush; the file is removed with step_N.tmp afterwards.
void free_partial_file(const std::string& path) {
  if (::truncate(path.c_str(), 0) != 0) {
    // nothing more to do: the close may fail and the error is reported anyway
  }
}

void close_checkpoint_library() {
  ckpt::H5Quiet quiet;
  H5close();
}

CheckpointWriter::~CheckpointWriter() {
  direct_.reset();  // its queued writes land before the file is freed or closed
  if (file_ >= 0) {
    ckpt::H5Quiet quiet;
    if (!failed_.empty() || H5Fflush(file_, H5F_SCOPE_LOCAL) < 0) free_partial_file(tmp_dir_ + "/" + file_name_);
    H5Fclose(file_);
  }
}

void CheckpointWriter::add(const std::string& key, const Shape& global_shape, DType dtype, const Slice& slice,
                           const void* data) {
  DG_CHECK(!done_ && file_ >= 0, "checkpoint {}: add('{}') after commit", final_dir_, key);
  const std::int64_t n = slice.numel();
  DG_CHECK(n == 0 || data != nullptr, "checkpoint tensor '{}': no data", key);
  try {
    write_shard(key, global_shape, dtype, slice, [&](std::int64_t ds, std::int64_t type) {
      if (n > 0 && H5Dwrite(ds, type, H5S_ALL, H5S_ALL, H5P_DEFAULT, data) < 0)
        fail("checkpoint {}: cannot write dataset /{} in {}: {}", final_dir_, key, file_name_, ckpt::h5_error());
      return xxh64(data, static_cast<std::size_t>(n) * dtype_size(dtype));  // = the dataset's bytes
    });
  } catch (const std::exception& e) {
    if (failed_.empty()) failed_ = e.what();
    throw;
  }
}

void CheckpointWriter::record_failure(const std::string& why) {
  if (failed_.empty()) failed_ = why.empty() ? "unknown error" : why;
}

void CheckpointWriter::add_pieces(const std::string& key, const Shape& shape, DType dtype, std::int64_t piece,
                                  const PieceFill& fill) {
  DG_CHECK(!done_ && file_ >= 0, "checkpoint {}: add('{}') after commit", final_dir_, key);
  DG_CHECK(piece > 0, "checkpoint tensor '{}': pieces of {} elements", key, piece);
  const std::int64_t n = shape_numel(shape);
  const std::size_t es = dtype_size(dtype);
  try {
    write_shard(key, shape, dtype, Slice::whole(shape), [&](std::int64_t ds, std::int64_t type) {
      std::int64_t piece_first = 0;  // the first element the buffered loop writes
      // A large tensor is written past HDF5, at its dataset's file address (allocated at creation, contiguous,
      // never filled): HDF5 keeps no copy of a dataset's raw bytes it did not write itself.
      haddr_t direct_base = HADDR_UNDEF;
      if (static_cast<std::size_t>(n) * es >= kDirectPieceBytes && direct_writes()) {
        direct_base = H5Dget_offset(ds);
        if (direct_base != HADDR_UNDEF && !direct_)
          direct_ = std::make_unique<DirectFile>(tmp_dir_ + "/" + file_name_);
      }
      Xxh64 hash;
      // Pieces filled straight into O_DIRECT staging buffers where the offsets allow (H5Pset_alignment puts
      // a dataset of 1 MiB or more at a 1 MiB boundary: every piece then starts on a block).
      const std::size_t piece_bytes = static_cast<std::size_t>(piece) * es;
      if (direct_base != HADDR_UNDEF && direct_base % DirectFile::block() == 0 && piece_bytes % DirectFile::block() == 0 &&
          piece_bytes <= DirectFile::kStaging) {
        std::int64_t at = 0;
        for (char* staged; at < n && (staged = direct_->acquire_staging()) != nullptr; at += piece) {
          const std::int64_t len = std::min(piece, n - at);
          try {
            fill(at, len, staged);
          } catch (...) {
            direct_->release_staging(staged);
            throw;
          }
          hash.update(staged, static_cast<std::size_t>(len) * es);
          direct_->write_staged(direct_base + static_cast<std::uint64_t>(at) * es, staged,
                                static_cast<std::size_t>(len) * es, fmt::format("dataset /{}", key));
        }
        if (at >= n) return hash.digest();
        piece_first = at;  // direct writing ended on this file system: the rest below, buffered
      }
      // Not zeroed: fill() writes every byte that is hashed and written (a zeroing pass cost 6% of a convert).
      const auto buf_bytes = std::make_unique_for_overwrite<std::byte[]>(static_cast<std::size_t>(std::min(n, piece)) * es);
      std::byte* const buf = buf_bytes.get();
      for (std::int64_t at = piece_first; at < n; at += piece) {
        const std::int64_t len = std::min(piece, n - at);
        fill(at, len, buf);
        hash.update(buf, static_cast<std::size_t>(len) * es);
        if (direct_base != HADDR_UNDEF) {  // the dataset's contiguous bytes, row-major, from direct_base
          direct_->write_at(direct_base + static_cast<std::uint64_t>(at) * es, buf, static_cast<std::size_t>(len) * es,
                            fmt::format("dataset /{}", key));
          continue;
        }
        if (shape.empty()) {  // a scalar: its one element
          if (H5Dwrite(ds, type, H5S_ALL, H5S_ALL, H5P_DEFAULT, buf) < 0)
            fail("checkpoint {}: cannot write dataset /{} in {}: {}", final_dir_, key, file_name_, ckpt::h5_error());
          continue;
        }
        std::int64_t done = 0;
        for (const ckpt::Box& b : ckpt::flat_to_boxes(at, at + len, shape)) {
          H5Id file = ckpt::hyperslab_space(shape, b.offset, b.count);
          H5Id mem = ckpt::hyperslab_space({b.numel()}, {0}, {b.numel()});
          if (H5Dwrite(ds, type, mem.get(), file.get(), H5P_DEFAULT, buf + static_cast<std::size_t>(done) * es) < 0)
            fail("checkpoint {}: cannot write dataset /{} in {}: {}", final_dir_, key, file_name_, ckpt::h5_error());
          done += b.numel();
        }
      }
      return hash.digest();
    });
  } catch (const std::exception& e) {
    if (failed_.empty()) failed_ = e.what();
    throw;
  }
}

void CheckpointWriter::write_shard(const std::string& key, const Shape& global_shape, DType dtype, const Slice& slice,
                                   const DataWriter& data) {
  if (std::string why; !ckpt::valid_key(key, why)) fail("checkpoint tensor name '{}' is invalid: {}", key, why);
  if (global_shape.size() > 32) fail("checkpoint tensor '{}': more than 32 dimensions", key);
  try {
    check_slice(slice, global_shape, fmt::format("checkpoint tensor '{}' {}", key, shape_str(global_shape)));
  } catch (const ConfigError& e) {
    throw Error(e.what());  // the caller's bug, not the user's input
  }

  int& count = shards_per_key_[key];
  const std::string dataset = "/" + key + (count ? fmt::format("#{}", count) : "");
  ++count;
  ckpt::H5Quiet quiet;
  auto h5fail = [&](const char* what) {
    fail("checkpoint {}: cannot {} {} in {}: {}", final_dir_, what, dataset, file_name_, ckpt::h5_error());
  };
  const Shape local = slice.local_shape();
  std::vector<hsize_t> dims(local.begin(), local.end());
  H5Id space(dims.empty() ? H5Screate(H5S_SCALAR) : H5Screate_simple(static_cast<int>(dims.size()), dims.data(), nullptr),
             H5Sclose);
  H5Id lcpl(H5Pcreate(H5P_LINK_CREATE), H5Pclose);
  H5Id dcpl(H5Pcreate(H5P_DATASET_CREATE), H5Pclose);
  if (!space.valid() || !lcpl.valid() || !dcpl.valid() || H5Pset_create_intermediate_group(lcpl.get(), 1) < 0 ||
      H5Pset_layout(dcpl.get(), H5D_CONTIGUOUS) < 0 || H5Pset_fill_time(dcpl.get(), H5D_FILL_TIME_NEVER) < 0 ||
      H5Pset_alloc_time(dcpl.get(), H5D_ALLOC_TIME_EARLY) < 0)  // its file address known at creation (add_pieces)
    h5fail("set up");
  const hid_t type = ckpt::h5_type(dtype);
  H5Id ds(H5Dcreate2(file_, dataset.c_str(), type, space.get(), lcpl.get(), dcpl.get(), H5P_DEFAULT), H5Dclose);
  if (!ds.valid()) h5fail("create dataset");
  const std::uint64_t sum = data(ds.get(), type);
  ckpt::write_attr_string(ds.get(), "dtype", std::string(dtype_name(dtype)));
  ckpt::write_attr_i64(ds.get(), "global_shape", global_shape, false);
  if (slice.flat)
    ckpt::write_attr_i64(ds.get(), "flat_range", {slice.begin, slice.end}, false);
  else
    ckpt::write_attr_i64(ds.get(), "global_offset", slice.offset, false);
  shards_.push_back({key, global_shape, dtype, dataset, slice, sum});
}

void CheckpointWriter::add(const std::string& key, const Shape& global_shape, const Slice& slice, const Tensor& local) {
  if (!local.is_cpu() || local.numel() != slice.numel()) {
    if (failed_.empty()) failed_ = fmt::format("tensor '{}' given as {}", key, local.describe());
    DG_CHECK(local.is_cpu(), "checkpoint tensor '{}': {} is not in host memory", key, local.describe());
    DG_CHECK(local.numel() == slice.numel(), "checkpoint tensor '{}': {} holds {} elements, the slice {} has {}", key,
             local.describe(), local.numel(), slice.str(), slice.numel());
  }
  add(key, global_shape, local.dtype(), slice, local.raw());
}

void CheckpointWriter::set_section(const std::string& name, json value) { sections_[name] = std::move(value); }
void CheckpointWriter::set_rank_section(const std::string& name, json value) { rank_sections_[name] = std::move(value); }

std::string CheckpointWriter::commit() {
  DG_CHECK(!done_, "checkpoint {} committed twice", final_dir_);
  done_ = true;
  const bool root = group_.rank() == 0;
  auto drop_tmp_on_failure = [&](const std::function<void()>& step) {
    try {
      group_.agree(step);
    } catch (...) {
      if (root) remove_tree_quietly(tmp_dir_);  // every rank has closed its file by now
      throw;
    }
  };

  // 1. Every rank closes and fsyncs its file.
  drop_tmp_on_failure([&] {
    ckpt::H5Quiet quiet;
    const hid_t f = file_;
    file_ = -1;
    if (f < 0) fail("checkpoint {}: rank {} has no open file", final_dir_, group_.rank());
    const std::string path = tmp_dir_ + "/" + file_name_;
    if (direct_) {  // add_pieces' writes past HDF5: all done, and their errors known, before the file closes
      try {
        direct_->sync();
      } catch (const std::exception& e) {
        record_failure(e.what());
      }
      direct_.reset();
    }
    if (!failed_.empty() || H5Fflush(f, H5F_SCOPE_LOCAL) < 0) {
      const std::string why = failed_.empty() ? ckpt::h5_error() : failed_;
      free_partial_file(path);  // so that the close below can flush what HDF5 still holds
      H5Fclose(f);
      // HDF5's error stack names the errno; a write past HDF5 (add_pieces) strerror's text
      const bool disk_full =
          why.find("errno = 28") != std::string::npos || why.find(std::strerror(ENOSPC)) != std::string::npos;
      fail("checkpoint {}: a shard could not be written on rank {} ({}{}): {}", final_dir_, group_.rank(), file_name_,
           disk_full ? ": no space left on the device" : "", why);
    }
    if (H5Fclose(f) < 0) fail("cannot close {}: {}", path, ckpt::h5_error());
    fsync_file(tmp_dir_ + "/" + file_name_);
  });

  // 2. Rank 0 gathers every rank's shard list and sections.
  json mine = {{"shards", json::array()}, {"sections", sections_}, {"rank_sections", rank_sections_}};
  for (const LocalShard& s : shards_) {
    json e = {{"key", s.key}, {"dtype", std::string(dtype_name(s.dtype))}, {"shape", s.shape}, {"dataset", s.dataset},
              {"checksum", checksum_string(s.checksum)}};
    if (s.slice.flat)
      e["flat"] = {s.slice.begin, s.slice.end};
    else
      e["offset"] = s.slice.offset, e["count"] = s.slice.count;
    mine["shards"].push_back(std::move(e));
  }
  const std::vector<std::string> parts = group_.gather_to_root(mine.dump());

  // 3. Rank 0 builds and checks the manifest, writes it last, publishes the directory and `latest`.
  drop_tmp_on_failure([&] {
    if (!root) return;
    CheckpointManifest m;
    m.step = step_;
    m.world_size = group_.size();
    m.dgemma_version = DGEMMA_VERSION;
    for (int r = 0; r < group_.size(); ++r) m.files.push_back(ckpt::rank_file_name(r));
    std::map<std::string, int> declared_by;
    std::map<std::string, int> section_from;
    for (int r = 0; r < group_.size(); ++r) {
      const json part = json::parse(parts[static_cast<std::size_t>(r)]);
      for (const json& e : part["shards"]) {
        const std::string key = e["key"];
        const Shape shape = e["shape"].get<Shape>();
        DType dt = DType::F32;
        DG_CHECK(ckpt::parse_dtype(e["dtype"].get<std::string>(), dt), "dtype {}", e["dtype"].dump());
        auto [it, fresh] = m.tensors.try_emplace(key);
        CheckpointTensor& t = it->second;
        if (fresh) {
          t.key = key, t.shape = shape, t.dtype = dt;
          declared_by[key] = r;
        } else if (t.shape != shape || t.dtype != dt) {
          fail("checkpoint {}: tensor '{}' is {}{} on rank {} but {}{} on rank {}", final_dir_, key,
               dtype_name(t.dtype), shape_str(t.shape), declared_by[key], dtype_name(dt), shape_str(shape), r);
        }
        Slice s = e.contains("flat") ? Slice::range(e["flat"][0], e["flat"][1])
                                     : Slice::box(e["offset"].get<Shape>(), e["count"].get<Shape>());
        std::uint64_t sum = 0;
        DG_CHECK(parse_checksum(e["checksum"].get<std::string>(), sum), "checksum {}", e["checksum"].dump());
        t.shards.push_back({m.files[static_cast<std::size_t>(r)], e["dataset"], std::move(s), sum});
      }
      for (const auto& [name, v] : part["sections"].items()) {
        if (m.sections.contains(name) && m.sections[name] != v)
          fail("checkpoint {}: section '{}' was set to different values on ranks {} and {}", final_dir_, name,
               section_from[name], r);
        m.sections[name] = v;
        section_from.try_emplace(name, r);
      }
      for (const auto& [name, v] : part["rank_sections"].items()) {
        if (!m.rank_sections.contains(name)) m.rank_sections[name] = json::array();
        json& arr = m.rank_sections[name];
        while (arr.size() < static_cast<std::size_t>(group_.size())) arr.push_back(nullptr);
        arr[static_cast<std::size_t>(r)] = v;
      }
    }
    try {
      m.validate("checkpoint " + tmp_dir_);
    } catch (const ConfigError& e) {
      throw Error(fmt::format("cannot commit: {}", e.what()));  // the saving code's bug
    }
    fsync_dir(tmp_dir_);
    write_file_atomic(tmp_dir_ + "/manifest.json", m.dump(), false);
    publish_dir(tmp_dir_, final_dir_, opts_.overwrite);
    fsync_dir(ckpt_dir_);
    if (opts_.update_latest)
      write_file_atomic((fs::path(ckpt_dir_) / "latest").string(), checkpoint_step_name(step_) + "\n", true);
  });
  return final_dir_;
}

}  // namespace dg
