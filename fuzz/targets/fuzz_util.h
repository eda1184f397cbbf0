// Shared by the fuzz targets (built with clang + libFuzzer in build-fuzz, and with the normal build as corpus
// replay tests). Exception policy: a parser must reject bad input by throwing; dg::ConfigError is the
// documented way. Any other std::exception is tolerated (it does not crash the process) but is noted on
// stderr once per distinct kind, since a user would get exit code 1 ("runtime error") and often a message
// that does not name the file; DGEMMA_FUZZ_STRICT=1 turns such exceptions into aborts (crashes).
#pragma once
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <filesystem>
#include <fstream>
#include <set>
#include <string>
#include <string_view>
#include <typeinfo>
#include <unistd.h>

#include "layers/error.h"

namespace dg::fuzz {

inline bool strict() {
  static const bool s = [] {
    const char* v = std::getenv("DGEMMA_FUZZ_STRICT");
    return v && *v && std::string_view(v) != "0";
  }();
  return s;
}

// Called from a catch (...) block of a target for every exception that is not a dg::ConfigError.
inline void note_unexpected(const std::exception& e) {
  static std::set<std::string> seen;
  std::string kind = typeid(e).name();
  std::string msg = e.what();
  // Group by type and the start of the message (up to the first digit or quote: file names, numbers and
  // offsets vary with the input).
  std::string key = kind + ": " + msg.substr(0, std::min<std::size_t>(msg.find_first_of("0123456789'\""), 60));
  if (strict()) {
    std::fprintf(stderr, "fuzz: exception other than dg::ConfigError: %s: %s\n", kind.c_str(), msg.c_str());
    std::abort();
  }
  if (seen.size() < 64 && seen.insert(key).second)
    std::fprintf(stderr, "fuzz: note: exception other than dg::ConfigError: %s: %s\n", kind.c_str(),
                 msg.substr(0, 300).c_str());
}

// DGEMMA_FUZZ_VERBOSE=1 prints every rejection (ConfigError message): to check what seeds exercise.
inline bool verbose() {
  static const bool v = [] {
    const char* s = std::getenv("DGEMMA_FUZZ_VERBOSE");
    return s && *s && std::string_view(s) != "0";
  }();
  return v;
}

// Runs fn; ConfigError is the expected rejection, any other exception is noted (see above).
template <class F>
void run_guarded(F&& fn) {
  try {
    fn();
  } catch (const dg::ConfigError& e) {
    if (verbose()) std::fprintf(stderr, "fuzz: rejected: %.300s\n", e.what());
  } catch (const std::exception& e) {
    note_unexpected(e);
  }
}

// A scratch file of this process (tmpfs when there is one), rewritten for every input; removed at exit.
inline std::string scratch_path(std::string_view suffix) {
  static const std::string base = [] {
    namespace fs = std::filesystem;
    const fs::path dir = fs::is_directory("/dev/shm") ? fs::path("/dev/shm") : fs::temp_directory_path();
    return (dir / ("dgemma-fuzz-" + std::to_string(::getpid()))).string();
  }();
  static std::set<std::string> made;
  std::string path = base + std::string(suffix);
  if (made.insert(path).second && made.size() == 1)
    std::atexit([] {
      for (const auto& p : made) std::remove(p.c_str());
    });
  return path;
}

inline std::string write_scratch(std::string_view suffix, const std::uint8_t* data, std::size_t size) {
  std::string p = scratch_path(suffix);
  std::ofstream out(p, std::ios::binary | std::ios::trunc);
  out.write(reinterpret_cast<const char*>(data), static_cast<std::streamsize>(size));
  out.close();
  if (!out) {
    std::fprintf(stderr, "fuzz: cannot write %s\n", p.c_str());
    std::abort();
  }
  return p;
}

// A failed invariant of a target (not an exception: a logic bug found by the fuzzer).
[[noreturn]] inline void invariant_failed(const char* what) {
  std::fprintf(stderr, "fuzz: invariant failed: %s\n", what);
  std::abort();
}

}  // namespace dg::fuzz
