// DirectFile: the aligned middle of each write queued for the I/O thread with O_DIRECT from a staging buffer,
// partial blocks written at once, buffered (io/direct_write.h).
#include "io/direct_write.h"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <condition_variable>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <map>
#include <thread>
#include <vector>

#include "layers/error.h"

namespace dg {

namespace {

std::atomic<bool> g_direct_writes{true};

// The process's staging buffers and its I/O thread. Writes run in the order they were queued.
class WriteBehind {
 public:
  static WriteBehind& get() {
    static WriteBehind w;
    return w;
  }

  // A free staging buffer (waits for one); nullptr when they cannot be allocated.
  char* acquire() {
    std::unique_lock<std::mutex> lock(mu_);
    if (!started_) start();
    if (buffers_.empty()) return nullptr;
    changed_.wait(lock, [&] { return !free_.empty(); });
    char* b = free_.back();
    free_.pop_back();
    return b;
  }

  void release(char* staged) {
    std::lock_guard<std::mutex> lock(mu_);
    free_.push_back(staged);
    changed_.notify_all();
  }

  void submit(DirectFile* file, std::uint64_t offset, char* staged, std::size_t n, std::string what) {
    std::lock_guard<std::mutex> lock(mu_);
    try {
      jobs_.push_back({file, offset, staged, n, std::move(what)});
    } catch (...) {
      free_.push_back(staged);  // reserved by the constructor of free_: cannot throw
      changed_.notify_all();
      throw;
    }
    ++pending_[file];
    changed_.notify_all();
  }

  // Waits until no write of `file` is queued or running.
  void drain(const DirectFile* file) {
    std::unique_lock<std::mutex> lock(mu_);
    changed_.wait(lock, [&] { return pending_.count(file) == 0 || pending_.at(file) == 0; });
    pending_.erase(file);
  }

  ~WriteBehind() {
    {
      std::lock_guard<std::mutex> lock(mu_);
      stop_ = true;
      changed_.notify_all();
    }
    if (io_.joinable()) io_.join();
    for (char* b : buffers_) std::free(b);
  }

 private:
  struct Job {
    DirectFile* file;
    std::uint64_t offset;
    char* staged;
    std::size_t n;
    std::string what;
  };

  // Under mu_. Without buffers or the thread (out of memory or threads), acquire() returns nullptr and every
  // write is buffered.
  void start() {
    started_ = true;
    for (int i = 0; i < DirectFile::kStagingBuffers; ++i) {
      char* b = static_cast<char*>(std::aligned_alloc(DirectFile::block(), DirectFile::kStaging));
      if (b == nullptr) break;
      buffers_.push_back(b);
    }
    try {
      if (!buffers_.empty()) io_ = std::thread([this] { run(); });
    } catch (const std::exception&) {
      for (char* b : buffers_) std::free(b);
      buffers_.clear();
    }
    free_ = buffers_;
    free_.reserve(buffers_.size());
  }

  void run() {
    std::unique_lock<std::mutex> lock(mu_);
    for (;;) {
      changed_.wait(lock, [&] { return stop_ || !jobs_.empty(); });
      if (jobs_.empty()) return;  // stop_
      Job job = std::move(jobs_.front());
      jobs_.pop_front();
      lock.unlock();
      job.file->run_queued(job.offset, job.staged, job.n, job.what);  // errors are kept by the file
      lock.lock();
      free_.push_back(job.staged);
      --pending_[job.file];
      changed_.notify_all();
    }
  }

  std::mutex mu_;
  std::condition_variable changed_;
  bool started_ = false, stop_ = false;
  std::vector<char*> buffers_, free_;
  std::deque<Job> jobs_;
  std::map<const DirectFile*, int> pending_;
  std::thread io_;
};

}  // namespace

std::size_t DirectFile::block() {
  static const std::size_t b = std::max<std::size_t>(4096, static_cast<std::size_t>(std::max(0L, ::sysconf(_SC_PAGESIZE))));
  return b;
}

void set_direct_writes(bool on) { g_direct_writes.store(on); }
bool direct_writes() { return g_direct_writes.load(); }

DirectFile::DirectFile(std::string path) : path_(std::move(path)) {
  fd_ = ::open(path_.c_str(), O_WRONLY | O_CLOEXEC);
  if (fd_ < 0) fail("cannot open {} for writing: {}", path_, std::strerror(errno));
  if (!direct_writes()) return;
  direct_fd_ = ::open(path_.c_str(), O_WRONLY | O_CLOEXEC | O_DIRECT);  // EINVAL: no O_DIRECT on this file system
  direct_ok_.store(direct_fd_ >= 0);
}

DirectFile::~DirectFile() {
  drain();
  if (direct_fd_ >= 0) ::close(direct_fd_);
  if (fd_ >= 0) ::close(fd_);
}

void pwrite_all(int fd, const std::string& path, std::string_view what, std::uint64_t offset, const void* data,
                std::size_t n) {
  const auto* p = static_cast<const char*>(data);
  while (n > 0) {
    const ssize_t w = ::pwrite(fd, p, std::min<std::size_t>(n, std::size_t{1} << 30), static_cast<off_t>(offset));
    if (w < 0 && errno == EINTR) continue;
    if (w <= 0) fail("{}: cannot write {}: {}", path, what, w < 0 ? std::strerror(errno) : "nothing written");
    p += w, offset += static_cast<std::uint64_t>(w), n -= static_cast<std::size_t>(w);
  }
}

void DirectFile::write_buffered(std::uint64_t offset, const void* data, std::size_t n, const std::string& what) {
  pwrite_all(fd_, path_, what, offset, data, n);
}

// On the I/O thread: one staged chunk of whole blocks. Where the file system turns O_DIRECT down (EINVAL) or
// writes it short, direct writing ends for this file and the chunk (the same bytes again) is written
// buffered. An error is kept for write_at / sync to throw.
void DirectFile::run_queued(std::uint64_t offset, const char* staged, std::size_t n, const std::string& what) {
  try {
    if (direct_ok_.load()) {
      ssize_t w;
      do w = ::pwrite(direct_fd_, staged, n, static_cast<off_t>(offset));
      while (w < 0 && errno == EINTR);
      if (w == static_cast<ssize_t>(n)) return;
      if (w < 0 && errno != EINVAL) fail("{}: cannot write {}: {}", path_, what, std::strerror(errno));
      direct_ok_.store(false);
    }
    write_buffered(offset, staged, n, what);
  } catch (const std::exception& e) {
    std::lock_guard<std::mutex> lock(error_mu_);
    if (error_.empty()) error_ = e.what();
  }
}

void DirectFile::throw_queued_error() {
  std::lock_guard<std::mutex> lock(error_mu_);
  if (!error_.empty()) throw Error(error_);
}

void DirectFile::drain() { WriteBehind::get().drain(this); }

void DirectFile::write_at(std::uint64_t offset, const void* data, std::size_t n, const std::string& what) {
  throw_queued_error();
  const std::uint64_t first = (offset + block() - 1) / block() * block(), last = (offset + n) / block() * block();
  if (!direct_ok_.load() || first >= last) return write_buffered(offset, data, n, what);
  const auto* p = static_cast<const char*>(data);
  write_buffered(offset, p, first - offset, what);  // the partial block at the start (may be empty)
  for (std::uint64_t at = first; at < last;) {      // the whole blocks, staged and queued
    char* staged = WriteBehind::get().acquire();
    const std::size_t len = std::min<std::size_t>(last - at, kStaging);
    if (staged == nullptr) {
      write_buffered(at, p + (at - offset), last - at, what);
      break;
    }
    std::memcpy(staged, p + (at - offset), len);
    WriteBehind::get().submit(this, at, staged, len, what);
    at += len;
  }
  write_buffered(last, p + (last - offset), offset + n - last, what);  // and the partial block at the end
}

char* DirectFile::acquire_staging() {
  throw_queued_error();
  return direct_ok_.load() ? WriteBehind::get().acquire() : nullptr;
}

void DirectFile::release_staging(char* staged) { WriteBehind::get().release(staged); }

void DirectFile::write_staged(std::uint64_t offset, char* staged, std::size_t n, const std::string& what) {
  const std::size_t whole = n / block() * block();
  try {
    if (offset % block() != 0 || n > kStaging) fail("{}: write_staged of {} bytes at {}: not a staged write", path_, n, offset);
    write_buffered(offset + whole, staged + whole, n - whole, what);
  } catch (...) {
    WriteBehind::get().release(staged);
    throw;
  }
  if (whole == 0) return WriteBehind::get().release(staged);
  WriteBehind::get().submit(this, offset, staged, whole, what);
}

void DirectFile::sync() {
  drain();
  throw_queued_error();
  if (::fsync(fd_) != 0) fail("cannot fsync {}: {}", path_, std::strerror(errno));
}

}  // namespace dg
