// Bulk writes that bypass the page cache (O_DIRECT), for conversion's large tensors.
//
// A buffered write(2) copies every byte into the page cache, and the later fsync writes it out again; on the
// machines measured (docs/performance.md, "Conversion") that copy was most of a conversion's time and its
// speed varied 4x from run to run with other jobs' dirty pages. With O_DIRECT the disk reads the bytes
// straight from a 4096-byte-aligned staging buffer.
//
// DirectFile::write_at(offset, data, n) takes any offset, length and buffer: the whole 4096-byte blocks inside
// [offset, offset + n) are copied into the aligned staging buffer and written with O_DIRECT; the partial
// blocks at either end go through a second, ordinary descriptor of the same file (blocks are never written
// both ways by one call; two calls that share a block write their parts of it buffered). Where the file
// system refuses O_DIRECT (tmpfs, some network file systems; open or the first write fails with EINVAL),
// every byte is written buffered, with the same result. The file must exist; DirectFile never creates,
// truncates or syncs it (sync() is fsync of the buffered bytes and metadata; O_DIRECT writes are on the
// device when they return, but fsync also covers the device cache).
//
// set_direct_writes(false) (dgemma convert --direct-io false) makes every DirectFile write buffered.
#pragma once
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>

namespace dg {

void set_direct_writes(bool on);
bool direct_writes();

class DirectFile {
 public:
  static constexpr std::size_t kBlock = 4096;         // offset, length and address alignment of O_DIRECT
  static constexpr std::size_t kStaging = 4u << 20;  // aligned staging buffer (bytes)

  explicit DirectFile(std::string path);  // opens the existing file; dg::Error naming it if it cannot
  ~DirectFile();
  DirectFile(const DirectFile&) = delete;
  DirectFile& operator=(const DirectFile&) = delete;

  // The bytes [offset, offset + n) of the file from data; dg::Error naming the file and `what` on failure.
  void write_at(std::uint64_t offset, const void* data, std::size_t n, const std::string& what);
  void sync();
  bool direct() const { return direct_fd_ >= 0; }  // false: every write is buffered
  const std::string& path() const { return path_; }

 private:
  void write_buffered(std::uint64_t offset, const void* data, std::size_t n, const std::string& what);
  void write_direct(std::uint64_t offset, const void* data, std::size_t n, const std::string& what);

  std::string path_;
  int fd_ = -1, direct_fd_ = -1;
  struct FreeAligned {
    void operator()(void* p) const;
  };
  std::unique_ptr<char, FreeAligned> staging_;
};

}  // namespace dg
