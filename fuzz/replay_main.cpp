// Corpus replay for a fuzz target with the normal build (g++, no libFuzzer, no sanitizers unless the build
// adds them): a plain main() that feeds files to the target's LLVMFuzzerTestOneInput, so every committed
// corpus entry and every fixed crash input stays a regression test in ctest (fuzz/replay.cmake).
//
//   fuzz_replay_<target> [-v] PATH...     PATH: a file, or a directory read recursively (sorted)
//
// Exit 0 when every file ran; a crash (abort, signal) names the file on stderr and fails the test. An
// argument that does not exist, or no file at all, is an error (exit 2): a corpus that went missing must
// not pass silently.
#include <algorithm>
#include <csignal>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <string>
#include <unistd.h>
#include <vector>

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size);

namespace {
namespace fs = std::filesystem;

char current[4096] = "";

extern "C" void on_fatal_signal(int sig) {
  const char msg[] = "fuzz replay: crashed on input: ";
  (void)!::write(2, msg, sizeof msg - 1);
  (void)!::write(2, current, std::strlen(current));
  (void)!::write(2, "\n", 1);
  std::signal(sig, SIG_DFL);
  std::raise(sig);
}
}  // namespace

int main(int argc, char** argv) {
  bool verbose = false;
  std::vector<fs::path> files;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "-v") {
      verbose = true;
      continue;
    }
    std::error_code ec;
    if (fs::is_directory(a, ec)) {
      std::vector<fs::path> in_dir;
      for (const auto& e : fs::recursive_directory_iterator(a))
        if (e.is_regular_file()) in_dir.push_back(e.path());
      std::sort(in_dir.begin(), in_dir.end());
      files.insert(files.end(), in_dir.begin(), in_dir.end());
    } else if (fs::is_regular_file(a, ec)) {
      files.emplace_back(a);
    } else {
      std::fprintf(stderr, "fuzz replay: no such file or directory: %s\n", a.c_str());
      return 2;
    }
  }
  if (files.empty()) {
    std::fprintf(stderr, "usage: %s [-v] FILE_OR_DIR... (no input file found)\n", argv[0]);
    return 2;
  }
  for (int sig : {SIGABRT, SIGSEGV, SIGBUS, SIGFPE, SIGILL}) std::signal(sig, on_fatal_signal);

  for (const fs::path& f : files) {
    std::snprintf(current, sizeof current, "%s", f.c_str());
    if (verbose) std::fprintf(stderr, "fuzz replay: %s\n", f.c_str());
    std::ifstream in(f, std::ios::binary);
    if (!in) {
      std::fprintf(stderr, "fuzz replay: cannot read %s\n", f.c_str());
      return 2;
    }
    const std::vector<char> bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    // A copy of exactly the file's size (as libFuzzer passes it), so out-of-bounds reads are not hidden
    // by a larger buffer when the build has sanitizers.
    std::vector<std::uint8_t> data(bytes.begin(), bytes.end());
    LLVMFuzzerTestOneInput(data.empty() ? nullptr : data.data(), data.size());
  }
  std::printf("fuzz replay: %zu file(s) ran without a crash\n", files.size());
  return 0;
}
