// Bulk writes that bypass the page cache (O_DIRECT) and run behind the caller, for conversion's tensors.
//
// A buffered write(2) copies every byte into the page cache, and the later fsync writes it out again; on the
// machines measured (docs/performance.md, "Conversion") that copy was most of a conversion's time and its
// speed varied 4x from run to run with other jobs' dirty pages. With O_DIRECT the disk reads the bytes
// straight from a 4096-byte-aligned staging buffer, and a write returns when they are on the device; so that
// the caller's transposes and checksums go on meanwhile, the direct writes run on one I/O thread of the
// process, from a fixed set of staging buffers (kStagingBuffers x kStaging bytes, the whole process).
//
// DirectFile::write_at(offset, data, n) takes any offset, length and buffer: the whole blocks (block(): 4096 bytes, or the page size) inside
// [offset, offset + n) are copied into staging buffers (waiting for a free one) and queued for the I/O
// thread; the partial blocks at either end are written at once through a second, ordinary descriptor of the
// same file (a block is never written both ways by one call; two calls that share a block write their parts
// of it buffered). Where the file system refuses O_DIRECT (tmpfs, some network file systems: open or a write
// fails with EINVAL), the bytes are written buffered instead, with the same result. An I/O error of a queued
// write is thrown by the file's next write_at or by sync(), which waits for the file's queued writes and
// fsyncs it. The file must exist; DirectFile never creates or truncates it. The destructor waits for the
// queued writes (their errors are then lost: call sync()).
//
// set_direct_writes(false) (dgemma convert --direct-io false) makes every DirectFile write buffered, at once.
#pragma once
#include <atomic>
#include <cstddef>
#include <cstdint>
#include <mutex>
#include <string>
#include <string_view>

namespace dg {

void set_direct_writes(bool on);
bool direct_writes();

// Every byte of data at `offset` of the open file fd (pwrite, retried after EINTR and short writes);
// dg::Error "PATH: cannot write WHAT: reason" on failure.
void pwrite_all(int fd, const std::string& path, std::string_view what, std::uint64_t offset, const void* data,
                std::size_t n);

class DirectFile {
 public:
  // The offset, length and address alignment of the direct writes: 4096 bytes, or the memory page where it is
  // larger (64 KiB pages: a buffered write must never share a page with a direct one, or the page cache
  // could write stale bytes over the direct ones later).
  static std::size_t block();
  static constexpr std::size_t kStaging = 16u << 20;  // bytes per staging buffer (conversion's piece)
  static constexpr int kStagingBuffers = 3;            // in the whole process: 48 MiB

  explicit DirectFile(std::string path);  // opens the existing file; dg::Error naming it if it cannot
  ~DirectFile();
  DirectFile(const DirectFile&) = delete;
  DirectFile& operator=(const DirectFile&) = delete;

  // The bytes [offset, offset + n) of the file from data (which may be reused on return); dg::Error naming
  // the file and `what` on failure (this write's, or an earlier queued one's).
  void write_at(std::uint64_t offset, const void* data, std::size_t n, const std::string& what);
  // The same without the copy into staging: acquire_staging() gives a free staging buffer (kStaging bytes,
  // block()-aligned; waits for one), or nullptr when this file's writes are not direct; the caller fills it
  // and hands it to write_staged with an offset that is a multiple of block() (a partial last block is
  // written at once, buffered, the whole blocks queued; the buffer is the writer's again either way).
  char* acquire_staging();
  void write_staged(std::uint64_t offset, char* staged, std::size_t n, const std::string& what);
  void release_staging(char* staged);  // an acquired buffer not written after all
  // Waits for this file's queued writes, throws the first error of any, fsyncs.
  void sync();
  bool direct() const { return direct_ok_.load(); }  // false: every write is buffered

  // For the I/O thread (direct_write.cpp): runs one queued write.
  void run_queued(std::uint64_t offset, const char* staged, std::size_t n, const std::string& what);

 private:
  void write_buffered(std::uint64_t offset, const void* data, std::size_t n, const std::string& what);
  void throw_queued_error();
  void drain();

  std::string path_;
  int fd_ = -1, direct_fd_ = -1;
  std::atomic<bool> direct_ok_{false};
  std::mutex error_mu_;
  std::string error_;  // the first failed queued write
};

}  // namespace dg
