// DirectFile (io/direct_write.h): whatever the offsets, lengths and buffer addresses, the file ends up with
// exactly the bytes written, with O_DIRECT on (where the file system takes it) and off, and in a file that
// cannot take O_DIRECT writes of the whole blocks it falls back to buffered writes.
#include <doctest/doctest.h>
#include <fcntl.h>
#include <unistd.h>

#include <filesystem>
#include <algorithm>
#include <fstream>
#include <iterator>
#include <random>
#include <string>
#include <vector>

#include "io/direct_write.h"

using namespace dg;
namespace fs = std::filesystem;

namespace {

std::vector<char> read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

// Writes a file of `size` bytes as random disjoint ranges (random order, random source alignment), some of
// them inside one block, some across many blocks and longer than the staging buffer; returns whether
// DirectFile used O_DIRECT. The file must equal the image.
bool write_ranges_and_compare(const std::string& path, std::size_t size, std::uint32_t seed) {
  { std::ofstream(path, std::ios::binary | std::ios::trunc); }
  REQUIRE(::truncate(path.c_str(), static_cast<off_t>(size)) == 0);
  std::mt19937 rng(seed);
  std::vector<char> image(size);
  for (char& c : image) c = static_cast<char>(rng());
  // Cut [0, size) at random points: lengths from 1 byte to 3 staging buffers.
  std::vector<std::pair<std::size_t, std::size_t>> ranges;
  for (std::size_t at = 0; at < size;) {
    const std::size_t pick = rng() % 4;
    const std::size_t len = pick == 0   ? 1 + rng() % 100
                            : pick == 1 ? 1 + rng() % (3 * DirectFile::block())
                            : pick == 2 ? DirectFile::block() * (1 + rng() % 8)
                                        : 1 + rng() % (3 * DirectFile::kStaging);
    ranges.emplace_back(at, std::min(len, size - at));
    at += ranges.back().second;
  }
  std::shuffle(ranges.begin(), ranges.end(), rng);
  bool direct = false;
  {
    DirectFile f(path);
    direct = f.direct();
    std::vector<char> src(3 * DirectFile::kStaging + 64);
    for (const auto& [at, len] : ranges) {
      const std::size_t shift = rng() % 64;  // the source buffer's address: not aligned
      std::copy_n(image.begin() + static_cast<std::ptrdiff_t>(at), len, src.begin() + static_cast<std::ptrdiff_t>(shift));
      f.write_at(at, src.data() + shift, len, "a range");
    }
    f.sync();
  }
  const std::vector<char> got = read_file(path);
  REQUIRE(got.size() == size);
  CHECK(got == image);
  return direct;
}

}  // namespace

TEST_CASE("DirectFile: exact bytes at any offset and length, O_DIRECT on and off") {
  const fs::path dir = fs::temp_directory_path() / ("dgemma_direct_" + std::to_string(::getpid()));
  fs::create_directories(dir);
  const std::string path = (dir / "out.bin").string();
  const bool was = direct_writes();
  for (const bool on : {true, false}) {
    CAPTURE(on);
    set_direct_writes(on);
    const bool used = write_ranges_and_compare(path, 3 * DirectFile::kStaging + 12345, on ? 1 : 2);
    if (!on) CHECK_FALSE(used);
    if (on && !used) MESSAGE("the file system of " << dir.string() << " refuses O_DIRECT: only the buffered path ran");
  }
  // Small files: everything inside one or two blocks.
  set_direct_writes(true);
  write_ranges_and_compare(path, 100, 3);
  write_ranges_and_compare(path, DirectFile::block() + 1, 4);
  set_direct_writes(was);
  fs::remove_all(dir);
}

TEST_CASE("DirectFile: two files written in turns share the staging buffers and the I/O thread") {
  const fs::path dir = fs::temp_directory_path() / ("dgemma_direct2_" + std::to_string(::getpid()));
  fs::create_directories(dir);
  const std::size_t size = 5 * DirectFile::kStaging + 777;
  std::vector<std::string> paths = {(dir / "a.bin").string(), (dir / "b.bin").string()};
  std::vector<std::vector<char>> images(2, std::vector<char>(size));
  std::mt19937 rng(9);
  for (std::size_t f = 0; f < 2; ++f) {
    { std::ofstream(paths[f], std::ios::binary | std::ios::trunc); }
    REQUIRE(::truncate(paths[f].c_str(), static_cast<off_t>(size)) == 0);
    for (char& c : images[f]) c = static_cast<char>(rng());
  }
  {
    DirectFile a(paths[0]), b(paths[1]);
    DirectFile* files[2] = {&a, &b};
    const std::size_t piece = DirectFile::kStaging + 1000;  // each piece more than one staging buffer
    for (std::size_t at = 0; at < size; at += piece)
      for (std::size_t f = 0; f < 2; ++f)
        files[f]->write_at(at + 3, images[f].data() + at + 3, std::min(piece, size - at - 3), "a piece");
    for (std::size_t f = 0; f < 2; ++f) files[f]->write_at(0, images[f].data(), 3, "the head");
    a.sync();
    b.sync();
  }
  for (std::size_t f = 0; f < 2; ++f) CHECK(read_file(paths[f]) == images[f]);
  fs::remove_all(dir);
}

TEST_CASE("DirectFile: a missing file is an error naming it") {
  CHECK_THROWS_WITH(DirectFile("/nonexistent/dir/x.bin"), doctest::Contains("/nonexistent/dir/x.bin"));
}
