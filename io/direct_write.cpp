// DirectFile: aligned middle of each write with O_DIRECT from a staging buffer, partial blocks buffered
// (io/direct_write.h).
#include "io/direct_write.h"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstdlib>
#include <cstring>

#include "layers/error.h"

namespace dg {

namespace {
std::atomic<bool> g_direct_writes{true};
}  // namespace

void set_direct_writes(bool on) { g_direct_writes.store(on); }
bool direct_writes() { return g_direct_writes.load(); }

void DirectFile::FreeAligned::operator()(void* p) const { std::free(p); }

DirectFile::DirectFile(std::string path) : path_(std::move(path)) {
  fd_ = ::open(path_.c_str(), O_WRONLY | O_CLOEXEC);
  if (fd_ < 0) fail("cannot open {} for writing: {}", path_, std::strerror(errno));
  if (!direct_writes()) return;
  direct_fd_ = ::open(path_.c_str(), O_WRONLY | O_CLOEXEC | O_DIRECT);  // EINVAL: no O_DIRECT on this file system
  if (direct_fd_ < 0) return;
  staging_.reset(static_cast<char*>(std::aligned_alloc(kBlock, kStaging)));
  if (!staging_) {
    ::close(direct_fd_);
    direct_fd_ = -1;
  }
}

DirectFile::~DirectFile() {
  if (direct_fd_ >= 0) ::close(direct_fd_);
  if (fd_ >= 0) ::close(fd_);
}

void DirectFile::write_buffered(std::uint64_t offset, const void* data, std::size_t n, const std::string& what) {
  const auto* p = static_cast<const char*>(data);
  while (n > 0) {
    const ssize_t w = ::pwrite(fd_, p, std::min<std::size_t>(n, std::size_t{1} << 30), static_cast<off_t>(offset));
    if (w < 0 && errno == EINTR) continue;
    if (w <= 0) fail("{}: cannot write {}: {}", path_, what, w < 0 ? std::strerror(errno) : "nothing written");
    p += w, offset += static_cast<std::uint64_t>(w), n -= static_cast<std::size_t>(w);
  }
}

// Whole blocks [offset, offset + n) (both multiples of kBlock), in chunks through the staging buffer. Where
// the file system turns O_DIRECT down (EINVAL) or writes a chunk short, direct writing ends for this file and
// the rest, that chunk included (the same bytes again), is written buffered.
void DirectFile::write_direct(std::uint64_t offset, const void* data, std::size_t n, const std::string& what) {
  const auto* p = static_cast<const char*>(data);
  while (n > 0 && direct_fd_ >= 0) {
    const std::size_t len = std::min(n, kStaging);
    std::memcpy(staging_.get(), p, len);
    ssize_t w;
    do w = ::pwrite(direct_fd_, staging_.get(), len, static_cast<off_t>(offset));
    while (w < 0 && errno == EINTR);
    if (w < 0 && errno != EINVAL) fail("{}: cannot write {}: {}", path_, what, std::strerror(errno));
    if (w != static_cast<ssize_t>(len)) {
      ::close(direct_fd_);
      direct_fd_ = -1;
      break;
    }
    p += len, offset += len, n -= len;
  }
  if (n > 0) write_buffered(offset, p, n, what);
}

void DirectFile::write_at(std::uint64_t offset, const void* data, std::size_t n, const std::string& what) {
  const std::uint64_t first = (offset + kBlock - 1) / kBlock * kBlock, last = (offset + n) / kBlock * kBlock;
  if (direct_fd_ < 0 || first >= last) return write_buffered(offset, data, n, what);
  const auto* p = static_cast<const char*>(data);
  write_buffered(offset, p, first - offset, what);  // the partial block at the start (may be empty)
  write_direct(first, p + (first - offset), last - first, what);
  write_buffered(last, p + (last - offset), offset + n - last, what);  // and at the end
}

void DirectFile::sync() {
  if (::fsync(fd_) != 0) fail("cannot fsync {}: {}", path_, std::strerror(errno));
}

}  // namespace dg
