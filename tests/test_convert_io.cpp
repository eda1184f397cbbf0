// The pieces `dgemma convert` streams with: the blocked transpose (against the element-by-element
// definition, every element size, row ranges across matrices), one safetensors file written by several
// writers at their offsets (the same bytes as SafetensorsWriter), released mappings that still read back,
// CheckpointWriter::add_pieces (the same data and checksum as add), and Comm::idle_barrier.
#include <doctest/doctest.h>

#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "io/checkpoint.h"
#include "io/direct_write.h"
#include "io/safetensors.h"
#include "io/transpose.h"
#include "jobs/checkpoint_group.h"
#include "parallel/comm.h"
#include "tests/mpi_test_util.h"

using namespace dg;
namespace fs = std::filesystem;

namespace {

using test::world;

struct SharedTempDir : test::SharedTempDir {
  SharedTempDir() : test::SharedTempDir("dg_convert_io") {}
};

struct LocalTempDir : test::TempDir {
  LocalTempDir() : test::TempDir("dg_convert_io") {}
};

std::vector<std::byte> pattern(std::size_t n, unsigned seed) {
  std::vector<std::byte> v(n);
  std::uint32_t x = seed * 2654435761u + 1;
  for (auto& b : v) x = x * 1664525u + 1013904223u, b = static_cast<std::byte>(x >> 24);
  return v;
}

std::string slurp(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream s;
  s << in.rdbuf();
  return s.str();
}

}  // namespace

TEST_CASE("the blocked transpose equals the definition for every element size and any row range") {
  for (std::size_t es : {1, 2, 4, 8}) {
    for (const Shape& shape : {Shape{1, 1}, Shape{3, 70, 129}, Shape{2, 65, 64}, Shape{130, 3}, Shape{2, 2, 0, 5}}) {
      const std::int64_t a = shape[shape.size() - 2], b = shape.back(), n = shape_numel(shape);
      const std::vector<std::byte> src = pattern(static_cast<std::size_t>(n) * es, static_cast<unsigned>(es));
      std::vector<std::byte> want(src.size()), got(src.size());
      for (std::int64_t z = 0; a * b > 0 && z < n / (a * b); ++z)
        for (std::int64_t i = 0; i < a; ++i)
          for (std::int64_t j = 0; j < b; ++j)
            std::memcpy(want.data() + static_cast<std::size_t>(z * a * b + j * a + i) * es,
                        src.data() + static_cast<std::size_t>(z * a * b + i * b + j) * es, es);
      transpose_last2(src.data(), shape, es, got.data());
      CHECK(got == want);
      // In pieces of whole output rows that straddle matrices: the same bytes.
      std::vector<std::byte> pieces(src.size());
      const std::int64_t step = std::max<std::int64_t>(a, 1) * 7;
      for (std::int64_t at = 0; at < n; at += step)
        transpose_range(src.data(), shape, es, at, std::min(step, n - at), pieces.data() + static_cast<std::size_t>(at) * es);
      CHECK(pieces == want);
      // Back again with the same code: the original.
      Shape back = shape;
      std::swap(back[back.size() - 1], back[back.size() - 2]);
      std::vector<std::byte> round(src.size());
      transpose_last2(got.data(), back, es, round.data());
      CHECK(round == src);
    }
  }
}

TEST_CASE("one safetensors file written in parts by several writers has SafetensorsWriter's bytes") {
  LocalTempDir tmp;
  const std::vector<TensorSpec> specs = {{"w.big", "BF16", {33, 17}}, {"a.f32", "F32", {5}}, {"u8", "U8", {3, 3}},
                                         {"empty", "F32", {0, 4}}, {"s", "I64", {}}};
  std::vector<std::vector<std::byte>> data;
  for (std::size_t i = 0; i < specs.size(); ++i) {
    const SafetensorsDType* d = find_safetensors_dtype(specs[i].dtype);
    data.push_back(pattern(static_cast<std::size_t>(shape_numel(specs[i].shape) * d->bits / 8), static_cast<unsigned>(i)));
  }
  SafetensorsWriter ref(tmp.path + "/ref.safetensors", specs);
  for (std::size_t i = 0; i < specs.size(); ++i) ref.write(specs[i].name, data[i].data(), data[i].size());
  ref.finish();

  const SafetensorsFilePlan plan = plan_safetensors_file(tmp.path + "/par.safetensors", specs);
  create_safetensors_file(plan);
  CHECK_THROWS(create_safetensors_file(plan));  // never over an existing file
  SafetensorsPartWriter w1(plan), w2(plan);
  for (std::size_t i = specs.size(); i-- > 0;) {  // reverse order, odd tensors by the second writer, in two parts
    SafetensorsPartWriter& w = i % 2 ? w2 : w1;
    const std::size_t half = data[i].size() / 2;
    w.write(specs[i].name, half, data[i].data() + half, data[i].size() - half);
    w.write(specs[i].name, 0, data[i].data(), half);
  }
  CHECK_THROWS_WITH(w1.write("a.f32", 16, data[1].data(), 8), doctest::Contains("a.f32"));
  CHECK_THROWS_WITH(w1.write("nope", 0, data[1].data(), 1), doctest::Contains("nope"));
  w1.sync();
  w2.sync();
  CHECK(slurp(tmp.path + "/par.safetensors") == slurp(tmp.path + "/ref.safetensors"));

  // Released pages read back the same.
  const SafetensorsFile f = SafetensorsFile::open(tmp.path + "/par.safetensors");
  const std::vector<std::byte> before(f.bytes("w.big").begin(), f.bytes("w.big").end());
  f.release("w.big", 0, before.size());
  f.release("w.big", 7, 1u << 30);
  const std::vector<std::byte> after(f.bytes("w.big").begin(), f.bytes("w.big").end());
  CHECK(before == after);
}

// Three sizes: small (HDF5 writes it), 120 KB (past HDF5 with O_DIRECT, copied into staging: an unaligned
// dataset address), 1.06 MB (aligned at 1 MiB: pieces filled straight into staging buffers, a partial last
// block); with direct writes on and off (io/direct_write.h).
TEST_CASE("add_pieces writes what add writes: the same data and checksum, read back") {
  SharedTempDir tmp;
  Comm& c = world();
  struct Case {
    Shape shape;
    std::int64_t piece;
  };
  const std::vector<Case> cases = {{{3, 5, 7}, 11}, {{300, 200}, 7777}, {{1000, 531}, 262144}};
  const std::vector<std::byte> data = pattern(1000 * 531 * 2, 9);
  const bool was = direct_writes();
  for (const bool direct : {true, false}) {
    set_direct_writes(direct);
    const std::string dir = tmp.path + (direct ? "/direct" : "/buffered");
    for (const bool pieces : {false, true}) {
      CommCheckpointGroup cg(c);
      CheckpointWriter w(cg, dir + (pieces ? "/pieces" : "/whole"), 1);
      for (std::size_t i = 0; i < cases.size(); ++i) {
        const Shape& shape = cases[i].shape;
        const std::int64_t piece = cases[i].piece;
        const std::string key = "param/r" + std::to_string(c.rank()) + "_" + std::to_string(i);
        if (pieces) {
          std::int64_t calls = 0;
          w.add_pieces(key, shape, DType::BF16, piece, [&](std::int64_t first, std::int64_t n, void* dst) {
            CHECK(first == piece * calls++);
            std::memcpy(dst, data.data() + first * 2, static_cast<std::size_t>(n) * 2);
          });
          CHECK(calls == (shape_numel(shape) + piece - 1) / piece);
        } else {
          w.add(key, shape, DType::BF16, Slice::whole(shape), data.data());
        }
      }
      if (pieces)
        w.add_pieces("carried/s" + std::to_string(c.rank()), {}, DType::I64, 4, [&](std::int64_t, std::int64_t n, void* dst) {
          CHECK(n == 1);
          std::memcpy(dst, data.data(), 8);
        });
      else
        w.add("carried/s" + std::to_string(c.rank()), {}, DType::I64, Slice::whole({}), data.data());
      w.commit();
    }
    c.idle_barrier();
    CheckpointReader whole = CheckpointReader::open(dir + "/whole"), piecewise = CheckpointReader::open(dir + "/pieces");
    piecewise.verify(true);
    for (const auto& [key, t] : whole.manifest().tensors) {
      CAPTURE(key);
      REQUIRE(piecewise.has(key));
      CHECK(piecewise.tensor(key).shards.at(0).checksum == t.shards.at(0).checksum);
      const Tensor x = whole.read(key, Slice::whole(t.shape)), y = piecewise.read(key, Slice::whole(t.shape));
      CHECK(std::memcmp(x.raw(), y.raw(), x.nbytes()) == 0);
      CHECK(std::memcmp(x.raw(), data.data(), x.nbytes()) == 0);
    }
  }
  set_direct_writes(was);
}

TEST_CASE("idle_barrier waits for every rank") {
  Comm& c = world();
  std::int32_t arrived = 0, one = 1;
  c.all_reduce(&one, &arrived, 1, DType::I32, ReduceOp::Sum);
  for (int round = 0; round < 3; ++round) c.idle_barrier();
  CHECK(arrived == c.size());
}
