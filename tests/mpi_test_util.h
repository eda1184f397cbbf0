// Helpers of the MPI tests: the world communicator, a temporary directory every rank sees, and one that is
// this rank's own.
#pragma once
#include <doctest/doctest.h>
#include <stdlib.h>

#include <cstdint>
#include <cstring>
#include <filesystem>
#include <memory>
#include <string>
#include <vector>

#include "parallel/comm.h"

namespace dg::test {

inline Comm& world() {
  static std::unique_ptr<Comm> w = mpi_world();
  return *w;
}

// A directory every rank sees: created by rank 0 (named after `prefix`), its name broadcast, removed at
// the end.
struct SharedTempDir {
  std::string path;
  explicit SharedTempDir(const char* prefix = "dg_test") {
    namespace fs = std::filesystem;
    Comm& c = world();
    std::vector<std::int32_t> buf(64, 0);
    if (c.rank() == 0) {
      std::string tmpl = (fs::temp_directory_path() / (std::string(prefix) + "_XXXXXX")).string();
      REQUIRE(::mkdtemp(tmpl.data()) != nullptr);
      REQUIRE(tmpl.size() < buf.size() * 4);
      std::memcpy(buf.data(), tmpl.data(), tmpl.size());
    }
    c.broadcast(buf.data(), buf.size(), DType::I32, 0);
    path = reinterpret_cast<const char*>(buf.data());
  }
  ~SharedTempDir() {
    world().barrier();
    if (world().rank() == 0) std::filesystem::remove_all(path);
  }
  SharedTempDir(const SharedTempDir&) = delete;
  SharedTempDir& operator=(const SharedTempDir&) = delete;
  std::string sub(const std::string& name) const { return path + "/" + name; }
};

// This rank's own temporary directory (named after `prefix`), removed at the end.
struct TempDir {
  std::string path;
  explicit TempDir(const char* prefix = "dg_test") {
    std::string tmpl = (std::filesystem::temp_directory_path() / (std::string(prefix) + "_XXXXXX")).string();
    REQUIRE(::mkdtemp(tmpl.data()) != nullptr);
    path = tmpl;
  }
  ~TempDir() { std::filesystem::remove_all(path); }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  std::string sub(const std::string& name) const { return path + "/" + name; }
};

}  // namespace dg::test
