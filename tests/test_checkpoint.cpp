// Sharded HDF5 checkpoints (io/checkpoint.h) under mpiexec with 1, 2 and 4 ranks: every rank writes
// different boxes (uneven dim-0 splits, flat slices cutting rows, a column split, a tensor held whole by
// one rank, a zero-size tensor, 0-d tensors), then each rank reads back slices of other decompositions
// (other world sizes, boxes and flat ranges crossing shard boundaries, the whole tensor). Comparisons are
// bit-exact (memcmp; the stored values are random bit patterns, NaN payloads included): tolerance 0.
// Also: the bf16/f16 HDF5 types as HDF5 itself sees them, the atomic save protocol, refusals to clobber,
// and ConfigErrors naming the file for damaged checkpoints. The temporary directory is made by rank 0 and
// shared by all ranks.
#include <doctest/doctest.h>
#include <hdf5.h>

#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <set>
#include <sstream>

#include "io/checkpoint.h"
#include "jobs/checkpoint_group.h"
#include "io/checkpoint_internal.h"
#include "parallel/comm.h"
#include "tests/mpi_test_util.h"

using namespace dg;
namespace fs = std::filesystem;
using nlohmann::json;

namespace {

using test::world;

struct SharedTempDir : test::SharedTempDir {
  SharedTempDir() : test::SharedTempDir("dg_ckpt") {}
};

std::uint64_t mix(std::uint64_t x) {  // splitmix64
  x += 0x9e3779b97f4a7c15ull;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}

// A global tensor of random bit patterns (every rank computes the same).
struct GlobalTensor {
  std::string key;
  Shape shape;
  DType dtype;
  std::vector<unsigned char> bytes;
  GlobalTensor(std::string k, Shape s, DType t, std::uint64_t seed) : key(std::move(k)), shape(std::move(s)), dtype(t) {
    bytes.resize(static_cast<std::size_t>(shape_numel(shape)) * dtype_size(dtype));
    for (std::size_t i = 0; i < bytes.size(); ++i) bytes[i] = static_cast<unsigned char>(mix(seed * 1000003 + i) >> 17);
  }
  std::int64_t numel() const { return shape_numel(shape); }
};

// The slice's elements, row-major: a naive reference independent of the library's geometry.
std::vector<unsigned char> extract(const GlobalTensor& g, const Slice& s) {
  const std::size_t es = dtype_size(g.dtype);
  std::vector<unsigned char> out;
  const std::size_t nd = g.shape.size();
  Shape idx(nd, 0);
  for (std::int64_t l = 0; l < g.numel(); ++l) {
    std::int64_t rem = l;
    for (std::size_t d = nd; d-- > 0;) idx[d] = rem % g.shape[d], rem /= g.shape[d];
    bool in = true;
    if (s.flat) {
      in = l >= s.begin && l < s.end;
    } else {
      for (std::size_t d = 0; d < nd; ++d) in = in && idx[d] >= s.offset[d] && idx[d] < s.offset[d] + s.count[d];
    }
    if (in) out.insert(out.end(), g.bytes.begin() + static_cast<std::ptrdiff_t>(l * es),
                       g.bytes.begin() + static_cast<std::ptrdiff_t>((l + 1) * es));
  }
  return out;
}

void add_slice(CheckpointWriter& w, const GlobalTensor& g, const Slice& s) {
  const auto data = extract(g, s);
  w.add(g.key, g.shape, g.dtype, s, data.data());
}

bool same_bits(const Tensor& t, const std::vector<unsigned char>& expect) {
  return t.nbytes() == expect.size() && (expect.empty() || std::memcmp(t.raw(), expect.data(), expect.size()) == 0);
}

std::int64_t split(std::int64_t n, int r, int p) { return n * r / p; }  // even boundaries

std::string read_text(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream s;
  s << in.rdbuf();
  return s.str();
}
void write_text(const std::string& path, const std::string& text) { std::ofstream(path, std::ios::binary) << text; }

// The names in a directory, sorted and space-separated.
std::string entries(const std::string& dir) {
  std::set<std::string> names;
  for (const auto& e : fs::directory_iterator(dir)) names.insert(e.path().filename().string());
  std::string out;
  for (const auto& n : names) out += (out.empty() ? "" : " ") + n;
  return out;
}

// The tensors of the round-trip test and how the writing world splits them.
struct Layout {
  std::vector<GlobalTensor> tensors;
  explicit Layout(int p) {
    std::int64_t rows = 0;
    for (int r = 0; r < p; ++r) rows += rows_of(r);
    tensors.emplace_back("param/rows_f32", Shape{rows, 5}, DType::F32, 1);       // uneven dim-0 split
    tensors.emplace_back("param/experts_bf16", Shape{7, 3, 4}, DType::BF16, 2);  // quadratic split, empty boxes
    tensors.emplace_back("master/rows_f32", Shape{rows, 5}, DType::F32, 3);      // flat split mid-row
    tensors.emplace_back("exp_avg/vec_i64", Shape{11}, DType::I64, 4);           // flat split of a vector
    tensors.emplace_back("param/whole_i64", Shape{3, 2}, DType::I64, 5);         // whole on the last rank
    tensors.emplace_back("param/empty_f32", Shape{0, 4}, DType::F32, 6);         // zero-size, rank 0
    tensors.emplace_back("param/norm_f16", Shape{6}, DType::F16, 7);             // whole on rank 0
    tensors.emplace_back("param/grid_bf16", Shape{4, 6}, DType::BF16, 8);        // column split
    tensors.emplace_back("param/scalar_f32", Shape{}, DType::F32, 9);            // 0-d, flat on the last rank
    tensors.emplace_back("param/scalar_i32", Shape{}, DType::I32, 10);           // 0-d, box on rank 0
  }
  static std::int64_t rows_of(int r) { return 2 + (r * 3) % 4; }

  // The slices rank r of p writes for tensor i.
  std::vector<Slice> written(std::size_t i, int r, int p) const {
    const GlobalTensor& g = tensors[i];
    const std::int64_t n = g.numel();
    switch (i) {
      case 0: {
        std::int64_t begin = 0;
        for (int q = 0; q < r; ++q) begin += rows_of(q);
        return {Slice::rows(g.shape, begin, begin + rows_of(r))};
      }
      case 1: {
        const std::int64_t b = 7ll * r * r / (p * p), e = 7ll * (r + 1) * (r + 1) / (p * p);
        return {Slice::rows(g.shape, b, e)};
      }
      case 2: {
        auto at = [&](int q) { return n * q * (q + 1) / (p * (p + 1)); };
        return {Slice::range(at(r), at(r + 1))};
      }
      case 3: return {Slice::range(split(n, r, p), split(n, r + 1, p))};
      case 4: return r == p - 1 ? std::vector<Slice>{Slice::whole(g.shape)} : std::vector<Slice>{};
      case 5:
      case 6: return r == 0 ? std::vector<Slice>{Slice::whole(g.shape)} : std::vector<Slice>{};
      case 7: {
        const std::int64_t b = split(6, r, p), e = split(6, r + 1, p);
        return {Slice::box({0, b}, {4, e - b})};
      }
      case 8: return r == p - 1 ? std::vector<Slice>{Slice::range(0, 1)} : std::vector<Slice>{};
      case 9: return r == 0 ? std::vector<Slice>{Slice::whole(g.shape)} : std::vector<Slice>{};
    }
    return {};
  }
};

// Slices of other decompositions: reading rank r of a world of q ranks.
std::vector<Slice> reads_for(const GlobalTensor& g, int r, int q) {
  std::vector<Slice> out;
  const Shape& s = g.shape;
  const std::size_t nd = s.size();
  const std::int64_t n = g.numel();
  if (nd == 0) return {Slice::whole(s), Slice::range(0, 1), Slice::range(0, 0)};
  out.push_back(Slice::rows(s, split(s[0], r, q), split(s[0], r + 1, q)));  // even dim-0 split
  Slice cols = Slice::whole(s);                                             // last-dim split
  cols.offset[nd - 1] = split(s[nd - 1], r, q), cols.count[nd - 1] = split(s[nd - 1], r + 1, q) - cols.offset[nd - 1];
  out.push_back(cols);
  Slice inner = Slice::whole(s);  // an interior box
  for (std::size_t d = 0; d < nd; ++d)
    if (s[d] > 2) inner.offset[d] = 1, inner.count[d] = s[d] - 2;
  out.push_back(inner);
  out.push_back(Slice::range(split(n, r, q), split(n, r + 1, q)));  // even flat split
  const std::int64_t b = std::min<std::int64_t>(n, 2 * r + 1), e = std::max<std::int64_t>(b, n - r - 1);
  out.push_back(Slice::range(b, e));  // ragged flat range
  return out;
}

// A checkpoint for the damage tests: 4p rows in 2p pieces (rank r holds pieces r and r + p), a bf16
// vector on the last rank, an i64 matrix on rank 0.
void write_small(const std::string& ckpt_dir, std::int64_t step, std::uint64_t seed = 10) {
  Comm& c = world();
  const int p = c.size(), r = c.rank();
  GlobalTensor a("param/a", {4 * p, 3}, DType::F32, seed), b("param/b", {5}, DType::BF16, seed + 1),
      cc("param/c", {3, 2}, DType::I64, seed + 2);
  CommCheckpointGroup cg(c);
  CheckpointWriter w(cg, ckpt_dir, step);
  add_slice(w, a, Slice::rows(a.shape, 2 * r, 2 * r + 2));
  add_slice(w, a, Slice::rows(a.shape, 2 * (r + p), 2 * (r + p) + 2));
  if (r == p - 1) add_slice(w, b, Slice::whole(b.shape));
  if (r == 0) add_slice(w, cc, Slice::whole(cc.shape));
  w.commit();
}

}  // namespace

TEST_CASE("flat ranges cut into row-major contiguous boxes, in order") {
  for (const Shape& dims : {Shape{7}, Shape{4, 3}, Shape{3, 4, 5}, Shape{2, 1, 3, 2}}) {
    const std::int64_t n = shape_numel(dims);
    for (std::int64_t b = 0; b <= n; ++b)
      for (std::int64_t e = b; e <= n; ++e) {
        const auto boxes = ckpt::flat_to_boxes(b, e, dims);
        CHECK(boxes.size() <= 2 * dims.size() - 1);
        std::int64_t at = b;
        for (const auto& box : boxes) {
          CHECK(ckpt::linear_index(box.offset, dims) == at);
          CHECK(ckpt::contiguous_in(box, ckpt::Box{Shape(dims.size(), 0), dims}));
          at += box.numel();
        }
        CHECK(at == e);
      }
  }
  CHECK(Slice::box({1, 0}, {2, 3}).str() == "[1:3, 0:3]");
  CHECK(Slice::range(4, 9).str() == "flat[4:9]");
  CHECK_THROWS_AS(check_slice(Slice::box({1, 0}, {3, 3}), {3, 3}, "t"), ConfigError);
  CHECK_THROWS_AS(check_slice(Slice::range(0, 10), {3, 3}, "t"), ConfigError);
}

TEST_CASE("a checkpoint written by N ranks reads back bit-exactly under other decompositions") {
  Comm& c = world();
  const int p = c.size(), me = c.rank();
  SharedTempDir tmp;
  const std::string ckpt_dir = tmp.sub("ckpt");
  const Layout layout(p);
  {
    CommCheckpointGroup cg(c);
    CheckpointWriter w(cg, ckpt_dir, 1000);
    for (std::size_t i = 0; i < layout.tensors.size(); ++i)
      for (const Slice& s : layout.written(i, me, p)) add_slice(w, layout.tensors[i], s);
    w.set_section("schedule", {{"lr", 1e-4}, {"step", 1000}});
    w.set_section("mesh", {{"world", p}, {"ep", 1}});  // same value from every rank is fine
    w.set_rank_section("data_cursor", {{"rank", me}, {"offset", 100 * me}});
    CHECK(w.commit() == ckpt_dir + "/step_00001000");
  }

  CheckpointReader rd = CheckpointReader::open(ckpt_dir);  // through `latest`
  CHECK(rd.step() == 1000);
  CHECK(rd.manifest().world_size == p);
  CHECK(rd.section("schedule")["step"] == 1000);
  CHECK(rd.section("mesh")["world"] == p);
  CHECK_THROWS_AS(rd.section("nope"), ConfigError);
  const json& cursor = rd.rank_section("data_cursor");
  REQUIRE(cursor.size() == static_cast<std::size_t>(p));
  for (int r = 0; r < p; ++r) CHECK(cursor[static_cast<std::size_t>(r)]["offset"] == 100 * r);
  rd.verify();

  for (const GlobalTensor& g : layout.tensors) {
    CAPTURE(g.key);
    rd.expect(g.key, g.shape, g.dtype);
    CHECK(same_bits(rd.read(g.key, Slice::whole(g.shape)), g.bytes));  // every rank reads everything
    // Reading worlds of 1..5 ranks: this rank plays the reading ranks rr with rr % p == me.
    for (int q = 1; q <= 5; ++q)
      for (int rr = me; rr < q; rr += p)
        for (const Slice& s : reads_for(g, rr, q)) {
          CAPTURE(s.str());
          CHECK(same_bits(rd.read(g.key, s), extract(g, s)));
        }
  }
  // Into a caller's tensor of another shape with the same element count; dtype must match.
  const GlobalTensor& rows = layout.tensors[0];
  Tensor flat = Tensor::empty({rows.numel()}, DType::F32);
  rd.read(rows.key, Slice::whole(rows.shape), flat);
  CHECK(same_bits(flat, rows.bytes));
  Tensor wrong = Tensor::empty(rows.shape, DType::BF16);
  CHECK_THROWS_AS(rd.read(rows.key, Slice::whole(rows.shape), wrong), Error);
  CHECK_THROWS_AS(rd.read(rows.key, Slice::rows(rows.shape, 0, rows.shape[0] + 1)), ConfigError);
  CHECK_THROWS_AS(rd.expect(rows.key, {rows.shape[0], 6}, DType::F32), ConfigError);
  CHECK_THROWS_AS(rd.tensor("param/missing"), ConfigError);

  // Explicit widening: bf16 -> f32 is exact.
  const GlobalTensor& ex = layout.tensors[1];
  Tensor wide = rd.read_as(ex.key, Slice::whole(ex.shape), DType::F32);
  const auto* bits = reinterpret_cast<const std::uint16_t*>(ex.bytes.data());
  bool exact = true;
  for (std::int64_t i = 0; i < ex.numel(); ++i) {
    const float want = bf16_bits_to_f32(bits[i]), got = wide.data<float>()[i];
    exact = exact && (std::memcmp(&want, &got, 4) == 0);
  }
  CHECK(exact);
  CHECK_THROWS_AS(rd.read_as("param/whole_i64", Slice::whole({3, 2}), DType::F32), ConfigError);
}

TEST_CASE("bf16 and f16 are HDF5 float types that HDF5 itself converts to the right numbers") {
  Comm& c = world();
  SharedTempDir tmp;
  const std::string ckpt_dir = tmp.sub("ckpt");
  const std::vector<float> values = {1.0f, -2.5f, 3.140625f, 0.0f, 1e-30f, -6.5e4f, 1.5e30f};
  Tensor bf = Tensor::from({7}, values).to(DType::BF16), hf = Tensor::from({7}, values).to(DType::F16);
  {
    CommCheckpointGroup cg(c);
    CheckpointWriter w(cg, ckpt_dir, 5);
    if (c.rank() == c.size() - 1) {
      w.add("param/known_bf16", bf);
      w.add("param/known_f16", hf);
    }
    w.commit();
  }
  const std::string file = fmt::format("{}/step_00000005/rank_{:05d}.h5", ckpt_dir, c.size() - 1);
  const hid_t f = H5Fopen(file.c_str(), H5F_ACC_RDONLY, H5P_DEFAULT);
  REQUIRE(f >= 0);
  struct Want {
    const char* name;
    std::size_t epos, esize, msize, bias;
    const Tensor* t;
    const char* dtype;
  };
  for (const Want& want : {Want{"/param/known_bf16", 7, 8, 7, 127, &bf, "bf16"},
                           Want{"/param/known_f16", 10, 5, 10, 15, &hf, "f16"}}) {
    CAPTURE(want.name);
    const hid_t d = H5Dopen2(f, want.name, H5P_DEFAULT);
    REQUIRE(d >= 0);
    const hid_t t = H5Dget_type(d);
    CHECK(H5Tget_class(t) == H5T_FLOAT);
    CHECK(H5Tget_size(t) == 2);
    CHECK(H5Tget_precision(t) == 16);
    CHECK(H5Tget_offset(t) == 0);
    CHECK(H5Tget_order(t) == H5T_ORDER_LE);
    std::size_t spos = 0, epos = 0, esize = 0, mpos = 0, msize = 0;
    REQUIRE(H5Tget_fields(t, &spos, &epos, &esize, &mpos, &msize) >= 0);
    CHECK(spos == 15);
    CHECK(epos == want.epos);
    CHECK(esize == want.esize);
    CHECK(mpos == 0);
    CHECK(msize == want.msize);
    CHECK(H5Tget_ebias(t) == want.bias);
    std::string dt;
    CHECK(ckpt::read_attr_string(d, "dtype", dt));
    CHECK(dt == want.dtype);
    // What h5dump does: HDF5's own conversion to native float.
    std::vector<float> got(values.size(), -1.f);
    REQUIRE(H5Dread(d, H5T_NATIVE_FLOAT, H5S_ALL, H5S_ALL, H5P_DEFAULT, got.data()) >= 0);
    const Tensor back = want.t->to(DType::F32);
    for (std::size_t i = 0; i < values.size(); ++i) CHECK(got[i] == back.data<float>()[i]);
    H5Tclose(t);
    H5Dclose(d);
  }
  H5Fclose(f);
}

TEST_CASE("the save is atomic: step_N.tmp until commit, then step_N, then latest") {
  Comm& c = world();
  const int me = c.rank();
  SharedTempDir tmp;
  const std::string dir = tmp.sub("ckpt");
  GlobalTensor v1("param/v", {4, 2}, DType::F32, 21), v2("param/v", {4, 2}, DType::F32, 22);
  auto write = [&](std::int64_t step, const GlobalTensor& g, CheckpointWriterOptions o = {}) {
    CommCheckpointGroup cg(c);
    CheckpointWriter w(cg, dir, step, o);
    if (me == 0) add_slice(w, g, Slice::whole(g.shape));
    return w.commit();
  };

  {
    CommCheckpointGroup cg(c);
    CheckpointWriter w(cg, dir, 7);
    if (me == 0) add_slice(w, v1, Slice::whole(v1.shape));
    c.barrier();
    if (me == 0) {
      CHECK(entries(dir) == "step_00000007.tmp");
      CHECK(entries(w.temp_dir()).find("manifest.json") == std::string::npos);
    }
    CHECK_FALSE(latest_checkpoint_step(dir).has_value());
    CHECK_THROWS_AS(CheckpointReader::open(dir), ConfigError);
    CHECK_THROWS_WITH_AS(CheckpointReader::open(w.temp_dir()), doctest::Contains("incomplete"), ConfigError);
    c.barrier();
    w.commit();
  }
  CHECK(entries(dir) == "latest step_00000007");
  CHECK(read_text(dir + "/latest") == "step_00000007\n");
  CHECK(latest_checkpoint_step(dir) == 7);
  c.barrier();  // every rank has looked before the next save changes the directory

  {  // a later step: latest moves only at its commit
    CommCheckpointGroup cg(c);
    CheckpointWriter w(cg, dir, 9);
    if (me == 0) add_slice(w, v2, Slice::whole(v2.shape));
    c.barrier();
    CHECK(latest_checkpoint_step(dir) == 7);
    CHECK(CheckpointReader::open(dir).step() == 7);
    c.barrier();
    w.commit();
  }
  CHECK(latest_checkpoint_step(dir) == 9);
  CHECK(list_checkpoint_steps(dir) == std::vector<std::int64_t>{7, 9});
  c.barrier();  // every rank has looked before the next save changes the directory

  {  // a save that dies before commit leaves only its .tmp, which the next save of that step replaces
    CommCheckpointGroup cg(c);
    CheckpointWriter w(cg, dir, 11);
    if (me == 0) add_slice(w, v1, Slice::whole(v1.shape));
  }
  c.barrier();
  CHECK(fs::exists(dir + "/step_00000011.tmp"));
  CHECK(latest_checkpoint_step(dir) == 9);
  CHECK(list_checkpoint_steps(dir) == std::vector<std::int64_t>{7, 9});
  c.barrier();  // every rank has looked before the next save changes the directory
  write(11, v1);
  CHECK(latest_checkpoint_step(dir) == 11);
  CHECK_FALSE(fs::exists(dir + "/step_00000011.tmp"));
  c.barrier();  // every rank has looked before the next save changes the directory

  // A second writer of step 9 without overwrite fails everywhere and leaves the first intact.
  const std::string manifest9 = read_text(dir + "/step_00000009/manifest.json");
  CHECK_THROWS_WITH_AS(write(9, v1), doctest::Contains("step_00000009 already exists"), ConfigError);
  c.barrier();
  CHECK(read_text(dir + "/step_00000009/manifest.json") == manifest9);
  CHECK_FALSE(fs::exists(dir + "/step_00000009.tmp"));
  CHECK(latest_checkpoint_step(dir) == 11);
  CHECK(same_bits(CheckpointReader::open(dir + "/step_00000009").read("param/v", Slice::whole({4, 2})), v2.bytes));
  c.barrier();  // every rank has looked before the next save changes the directory

  // With overwrite it is replaced in one step.
  write(9, v1, {.overwrite = true, .update_latest = false});
  CHECK(latest_checkpoint_step(dir) == 11);
  CHECK(same_bits(CheckpointReader::open(dir + "/step_00000009").read("param/v", Slice::whole({4, 2})), v1.bytes));
  CHECK(entries(dir) == "latest step_00000007 step_00000009 step_00000011");

  // `latest` naming something that is not a complete checkpoint is an error, not a silent fallback.
  c.barrier();
  if (me == 0) write_text(dir + "/latest", "step_00000099\n");
  c.barrier();
  CHECK_THROWS_WITH_AS(latest_checkpoint_step(dir), doctest::Contains("latest"), ConfigError);
  c.barrier();
  if (me == 0) write_text(dir + "/latest", "garbage\n");
  c.barrier();
  CHECK_THROWS_WITH_AS(CheckpointReader::open(dir), doctest::Contains("latest"), ConfigError);
  c.barrier();
  if (me == 0) fs::remove(dir + "/latest");
  c.barrier();
  CHECK(latest_checkpoint_step(dir) == 11);  // without `latest`: the highest complete step
  CHECK_FALSE(latest_checkpoint_step(tmp.sub("nothing_here")).has_value());
}

TEST_CASE("a save whose shards do not tile, or disagree between ranks, fails on every rank and publishes nothing") {
  Comm& c = world();
  const int p = c.size(), me = c.rank();
  SharedTempDir tmp;
  const std::string dir = tmp.sub("ckpt");
  GlobalTensor g("param/g", {2 * p, 2}, DType::F32, 31);

  auto expect_failed_save = [&](std::int64_t step, const char* what, auto&& adds) {
    CAPTURE(what);
    CommCheckpointGroup cg(c);
    CheckpointWriter w(cg, dir, step);
    adds(w);
    CHECK_THROWS_WITH_AS(w.commit(), doctest::Contains(what), Error);
    c.barrier();
    CHECK_FALSE(fs::exists(checkpoint_step_dir(dir, step)));
    CHECK_FALSE(fs::exists(checkpoint_step_dir(dir, step) + ".tmp"));
    CHECK_FALSE(fs::exists(dir + "/latest"));
    c.barrier();
  };
  expect_failed_save(1, "overlap", [&](CheckpointWriter& w) {  // every rank adds row 0 (and its own rows)
    add_slice(w, g, Slice::rows(g.shape, 2 * me, 2 * me + 2));
    add_slice(w, g, Slice::rows(g.shape, 0, 1));
  });
  expect_failed_save(2, "of its", [&](CheckpointWriter& w) {  // the last row is missing: a gap
    add_slice(w, g, Slice::rows(g.shape, 2 * me, 2 * me + (me == p - 1 ? 1 : 2)));
  });
  if (p > 1)
    expect_failed_save(3, "on rank", [&](CheckpointWriter& w) {  // ranks disagree on the dtype
      const GlobalTensor h("param/g", g.shape, me == 1 ? DType::BF16 : DType::F32, 32);
      add_slice(w, h, Slice::rows(h.shape, 2 * me, 2 * me + 2));
    });
  if (p > 1)
    expect_failed_save(4, "different values", [&](CheckpointWriter& w) {
      add_slice(w, g, Slice::rows(g.shape, 2 * me, 2 * me + 2));
      w.set_section("config", {{"rank", me}});
    });

  // Bad arguments are the caller's bug: dg::Error at add(); the commit then fails on every rank.
  expect_failed_save(5, "could not be written on rank", [&](CheckpointWriter& w) {
    add_slice(w, g, Slice::rows(g.shape, 2 * me, 2 * me + 2));
    std::vector<float> zero(8, 0.f);
    if (me == p - 1) {
      CHECK_THROWS_AS(add_slice(w, g, Slice::rows(g.shape, 0, 2 * p + 1)), Error);
      CHECK_THROWS_AS(w.add("param//x", {8}, DType::F32, Slice::whole({8}), zero.data()), Error);
      CHECK_THROWS_AS(w.add("param/x y", {8}, DType::F32, Slice::whole({8}), zero.data()), Error);
      CHECK_THROWS_AS(w.add("param/../x", {8}, DType::F32, Slice::whole({8}), zero.data()), Error);
      CHECK_THROWS_AS(w.add("param/x", {}, DType::F32, Slice::range(0, 2), zero.data()), Error);
      CHECK_THROWS_AS(w.add("param/x", {8}, Slice::whole({8}), Tensor::zeros({7}, DType::F32)), Error);
    }
  });
  CommCheckpointGroup cg(c);
  CheckpointWriter w(cg, dir, 6);
  add_slice(w, g, Slice::rows(g.shape, 2 * me, 2 * me + 2));
  CHECK(w.commit() == checkpoint_step_dir(dir, 6));
  CHECK_THROWS_AS(w.commit(), Error);
}

TEST_CASE("damaged checkpoints give ConfigErrors naming the file") {
  Comm& c = world();
  const int p = c.size(), me = c.rank();
  SharedTempDir tmp;
  const std::string base = tmp.sub("base");
  write_small(base, 3);
  const std::string good = checkpoint_step_dir(base, 3);
  const std::string last_file = fmt::format("rank_{:05d}.h5", p - 1);
  {  // the good one reads
    CheckpointReader rd = CheckpointReader::open(good);
    rd.verify();
    CHECK(same_bits(rd.read("param/a", Slice::whole({4 * p, 3})), GlobalTensor("param/a", {4 * p, 3}, DType::F32, 10).bytes));
  }

  // Rank 0 makes one damaged copy per case; then every rank checks them all.
  auto variant = [&](const std::string& name, auto&& damage) {
    const std::string d = tmp.sub(name) + "/step_00000003";
    if (me == 0) {
      fs::create_directories(tmp.sub(name));
      fs::copy(good, d, fs::copy_options::recursive);
      damage(d);
    }
    return d;
  };
  auto edit_manifest = [](const std::string& d, auto&& edit) {
    json m = json::parse(read_text(d + "/manifest.json"));
    edit(m);
    write_text(d + "/manifest.json", m.dump(2));
  };
  const std::string no_file = variant("no_file", [&](const std::string& d) { fs::remove(d + "/" + last_file); });
  const std::string no_manifest = variant("no_manifest", [](const std::string& d) { fs::remove(d + "/manifest.json"); });
  const std::string overlap = variant("overlap", [&](const std::string& d) {
    edit_manifest(d, [](json& m) { m["tensors"]["param/a"]["shards"][0]["count"][0] = 3; });
  });
  const std::string gap = variant("gap", [&](const std::string& d) {
    edit_manifest(d, [](json& m) { m["tensors"]["param/a"]["shards"].erase(1); });
  });
  const std::string garbage = variant("garbage", [&](const std::string& d) {
    write_text(d + "/rank_00000.h5", std::string(4096, 'x'));
  });
  const std::string truncated = variant("truncated", [&](const std::string& d) {
    const std::string f = d + "/" + last_file;
    fs::resize_file(f, fs::file_size(f) / 2);
  });
  const std::string wrong_dtype = variant("wrong_dtype", [&](const std::string& d) {
    edit_manifest(d, [](json& m) { m["tensors"]["param/b"]["dtype"] = "f32"; });
  });
  const std::string unknown_dtype = variant("unknown_dtype", [&](const std::string& d) {
    edit_manifest(d, [](json& m) { m["tensors"]["param/b"]["dtype"] = "f8"; });
  });
  const std::string wrong_shape = variant("wrong_shape", [&](const std::string& d) {
    edit_manifest(d, [](json& m) {
      m["tensors"]["param/c"]["shape"] = {2, 3};
      m["tensors"]["param/c"]["shards"][0]["count"] = {2, 3};
    });
  });
  const std::string version = variant("version", [&](const std::string& d) {
    edit_manifest(d, [](json& m) { m["format_version"] = 2; });
  });
  const std::string bad_json = variant("bad_json", [&](const std::string& d) {
    write_text(d + "/manifest.json", "{\"format\": \"dgemma-checkpoint\", ");
  });
  const std::string escape = variant("escape", [&](const std::string& d) {
    edit_manifest(d, [](json& m) { m["files"][0] = "../rank_00000.h5"; });
  });
  const std::string foreign = variant("foreign", [&](const std::string& d) {  // a rank file of another step
    edit_manifest(d, [](json& m) { m["step"] = 4; });
  });
  c.barrier();

  auto open_fails = [](const std::string& d, const std::vector<std::string>& needles) {
    CAPTURE(d);
    try {
      CheckpointReader::open(d);
      FAIL("open succeeded");
    } catch (const ConfigError& e) {
      for (const auto& n : needles) CHECK_MESSAGE(std::string(e.what()).find(n) != std::string::npos, e.what());
    }
  };
  auto read_fails = [](const std::string& d, const std::string& key, const std::vector<std::string>& needles) {
    CAPTURE(d);
    CheckpointReader rd = CheckpointReader::open(d);
    for (int pass = 0; pass < 2; ++pass) {  // read(), then verify()
      try {
        if (pass == 0)
          rd.read(key, Slice::whole(rd.tensor(key).shape));
        else
          rd.verify();
        FAIL("read succeeded");
      } catch (const ConfigError& e) {
        for (const auto& n : needles) CHECK_MESSAGE(std::string(e.what()).find(n) != std::string::npos, e.what());
      }
    }
  };
  open_fails(no_file, {last_file, "missing"});
  open_fails(no_manifest, {"manifest.json"});
  open_fails(overlap, {"manifest.json", "param/a", "overlap"});
  open_fails(gap, {"manifest.json", "param/a", "gap"});
  open_fails(unknown_dtype, {"manifest.json", "param/b", "f8"});
  open_fails(version, {"manifest.json", "format_version"});
  open_fails(bad_json, {"manifest.json"});
  open_fails(escape, {"manifest.json", "files[0]"});
  read_fails(garbage, "param/c", {"rank_00000.h5"});
  read_fails(truncated, "param/b", {last_file});
  read_fails(wrong_dtype, "param/b", {last_file, "/param/b", "bf16", "f32"});
  read_fails(wrong_shape, "param/c", {"rank_00000.h5", "[3, 2]"});
  read_fails(foreign, "param/c", {"rank_00000.h5", "another checkpoint"});
  // Intact tensors of a checkpoint whose other file is damaged still read (files open lazily).
  if (p > 1) {
    CheckpointReader rd = CheckpointReader::open(truncated);
    CHECK(rd.read("param/c", Slice::whole({3, 2})).numel() == 6);
  }
}
