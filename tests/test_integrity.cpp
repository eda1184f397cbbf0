// Data integrity of what dgemma reads: the XXH64 checksums of checkpoint shards (a byte flipped inside a
// dataset of a rank file is found by every read that touches the shard, whole or partial, and by verify;
// checkpoints without checksums still load), and the refusal of NaN / Inf weights when an HF model is
// loaded for compute (HfTensorReader, named by file, tensor and element); integers of a saved data cursor
// state range-checked. One process.
#include <doctest/doctest.h>
#include <hdf5.h>

#include <cmath>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "io/checkpoint.h"
#include "io/data_check.h"
#include "io/hf_config.h"
#include "io/hf_model.h"
#include "io/hf_names.h"
#include "io/safetensors.h"
#include "io/sft_data.h"
#include "jobs/checkpoint_group.h"
#include "parallel/comm.h"
#include "tests/mpi_test_util.h"

using namespace dg;
namespace fs = std::filesystem;
using nlohmann::json;

namespace {

using test::world;

struct TempDir : test::TempDir {
  TempDir() : test::TempDir("dg_integrity") {}
};

std::vector<unsigned char> pattern(std::size_t n, unsigned seed) {
  std::vector<unsigned char> v(n);
  std::uint64_t x = seed * 0x9e3779b97f4a7c15ull + 1;
  for (auto& b : v) {
    x ^= x << 13, x ^= x >> 7, x ^= x << 17;
    b = static_cast<unsigned char>(x >> 11);
  }
  return v;
}

std::string read_text(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream s;
  s << in.rdbuf();
  return s.str();
}

// Flips bits of the byte `at` bytes into a dataset's data (its file offset from HDF5 itself).
void flip_in_dataset(const std::string& file, const std::string& dataset, std::uint64_t at) {
  const hid_t f = H5Fopen(file.c_str(), H5F_ACC_RDONLY, H5P_DEFAULT);
  REQUIRE(f >= 0);
  const hid_t d = H5Dopen2(f, dataset.c_str(), H5P_DEFAULT);
  REQUIRE(d >= 0);
  const haddr_t offset = H5Dget_offset(d);
  const hsize_t size = H5Dget_storage_size(d);
  H5Dclose(d);
  H5Fclose(f);
  REQUIRE(offset != HADDR_UNDEF);
  REQUIRE(at < size);
  std::fstream io(file, std::ios::in | std::ios::out | std::ios::binary);
  io.seekg(static_cast<std::streamoff>(offset + at));
  char c = 0;
  io.read(&c, 1);
  c = static_cast<char>(c ^ 0x24);
  io.seekp(static_cast<std::streamoff>(offset + at));
  io.write(&c, 1);
}

void expect_corrupt(const std::function<void()>& fn, const std::string& file, const std::string& key) {
  try {
    fn();
    FAIL("no error for corrupt data of " << key);
  } catch (const ConfigError& e) {
    const std::string m = e.what();
    CHECK_MESSAGE(m.find(file) != std::string::npos, m);
    CHECK_MESSAGE(m.find("'" + key + "'") != std::string::npos, m);
    CHECK_MESSAGE(m.find("checksum mismatch") != std::string::npos, m);
  }
}

}  // namespace

TEST_CASE("xxh64: the reference test vectors, and pieces of any size give the same digest") {
  auto str = [](const char* s) { return xxh64(s, std::strlen(s)); };
  CHECK(str("") == 0xEF46DB3751D8E999ull);
  CHECK(str("a") == 0xD24EC4F1A98C6E5Bull);
  CHECK(str("abc") == 0x44BC2CF5AD770999ull);
  CHECK(str("Nobody inspects the spammish repetition") == 0xFBCEA83C8A378BF1ull);
  const auto data = pattern(4099, 1);
  const std::uint64_t whole = xxh64(data.data(), data.size());
  for (std::size_t step : {1u, 3u, 8u, 31u, 32u, 33u, 100u, 1024u}) {
    Xxh64 h;
    for (std::size_t at = 0; at < data.size(); at += step) h.update(data.data() + at, std::min(step, data.size() - at));
    CHECK(h.digest() == whole);
  }
  std::uint64_t parsed = 0;
  CHECK(checksum_string(0x0123456789abcdefull) == "xxh64:0123456789abcdef");
  CHECK(parse_checksum("xxh64:0123456789abcdef", parsed));
  CHECK(parsed == 0x0123456789abcdefull);
  for (const char* bad : {"xxh64:0123456789ABCDEF", "xxh64:0123", "crc32c:01234567", "0123456789abcdef", ""})
    CHECK_FALSE(parse_checksum(bad, parsed));
}

TEST_CASE("find_non_finite: NaN, +Inf and -Inf in f32, bf16 and f16; integers never") {
  const std::vector<float> v = {1.f, 0.f, -0.f, -INFINITY, NAN, INFINITY};
  for (DType t : {DType::F32, DType::BF16, DType::F16}) {
    CAPTURE(dtype_name(t));
    const Tensor x = Tensor::from({3}, std::vector<float>(v.begin(), v.begin() + 3)).to(t);
    CHECK_FALSE(find_non_finite(x.raw(), t, 3));
    const Tensor y = Tensor::from({3}, std::vector<float>(v.begin() + 3, v.end())).to(t);
    const NonFinite bad = find_non_finite(y.raw(), t, 3);
    CHECK(bad.first == 0);
    CHECK(bad.count == 3);
    CHECK(bad.first_value == "-inf");
    CHECK(find_non_finite(static_cast<const char*>(y.raw()) + dtype_size(t), t, 2).first_value == "nan");
  }
  const std::int32_t ints[] = {0x7FC00000, 0x7F800000};
  CHECK_FALSE(find_non_finite(ints, DType::I32, 2));
  // Long tensors are scanned block by block: values in later blocks, and a block boundary, are found.
  for (DType t : {DType::F32, DType::BF16, DType::F16}) {
    CAPTURE(dtype_name(t));
    std::vector<float> w(5000, 0.5f);
    CHECK_FALSE(find_non_finite(Tensor::from({5000}, w).to(t).raw(), t, 5000));
    w[1023] = INFINITY;
    w[1024] = NAN;
    w[4999] = -INFINITY;
    const NonFinite bad = find_non_finite(Tensor::from({5000}, w).to(t).raw(), t, 5000);
    CHECK(bad.count == 3);
    CHECK(bad.first == 1023);
    CHECK(bad.first_value == "inf");
  }
}

TEST_CASE("checkpoint checksums: a flipped byte in a rank file is found by every read that touches the shard") {
  Comm& c = world();
  REQUIRE(c.size() == 1);
  TempDir tmp;
  const std::string dir = tmp.sub("ckpt");
  // a: f32 [64, 40] in two dim-0 shards; v: bf16 [1000] in two flat shards; s: a 0-d i64; big: f32 over
  // 16 MiB, so that whole-shard verification reads it in two pieces.
  const auto a = pattern(64 * 40 * 4, 2), v = pattern(1000 * 2, 3), s = pattern(8, 4);
  const auto big = pattern(1100 * 4000 * 4, 5);
  {
    CommCheckpointGroup cg(c);
    CheckpointWriter w(cg, dir, 3);
    w.add("param/a", {64, 40}, DType::F32, Slice::rows({64, 40}, 0, 24), a.data());
    w.add("param/a", {64, 40}, DType::F32, Slice::rows({64, 40}, 24, 64), a.data() + 24 * 40 * 4);
    w.add("exp_avg/v", {1000}, DType::BF16, Slice::range(0, 300), v.data());
    w.add("exp_avg/v", {1000}, DType::BF16, Slice::range(300, 1000), v.data() + 600);
    w.add("param/s", {}, DType::I64, Slice::whole({}), s.data());
    w.add("param/big", {1100, 4000}, DType::F32, Slice::whole({1100, 4000}), big.data());
    w.commit();
  }
  const std::string step = dir + "/step_00000003", file = step + "/rank_00000.h5";
  {  // every shard records the XXH64 of the bytes it was given
    const CheckpointManifest m = CheckpointReader::open(step).manifest();
    const auto& sa = m.tensors.at("param/a").shards;
    REQUIRE(sa.size() == 2);
    CHECK(sa[0].checksum == xxh64(a.data(), 24 * 40 * 4));
    CHECK(sa[1].checksum == xxh64(a.data() + 24 * 40 * 4, 40 * 40 * 4));
    CHECK(m.tensors.at("param/s").shards[0].checksum == xxh64(s.data(), 8));
    CHECK(read_text(step + "/manifest.json").find(checksum_string(xxh64(v.data(), 600))) != std::string::npos);
  }
  {  // intact: whole, partial and cross-shard reads, verify(true), and the visitor sees the stored bytes
    CheckpointReader rd = CheckpointReader::open(step);
    CHECK(rd.has_checksums());
    CHECK(std::memcmp(rd.read("param/a", Slice::rows({64, 40}, 20, 30)).raw(), a.data() + 20 * 160, 10 * 160) == 0);
    CHECK(std::memcmp(rd.read("exp_avg/v", Slice::range(250, 400)).raw(), v.data() + 500, 300) == 0);
    const Tensor rows = rd.read("param/big", Slice::rows({1100, 4000}, 7, 9));
    CHECK(std::memcmp(rows.raw(), big.data() + 7 * 16000, 2 * 16000) == 0);
    rd.verify(true);
    std::vector<unsigned char> seen(a.size());
    rd.verify_tensor("param/a", [&](const CheckpointShard& sh, std::int64_t first, const void* data, std::int64_t n) {
      std::memcpy(seen.data() + (sh.slice.offset[0] * 40 + first) * 4, data, static_cast<std::size_t>(n) * 4);
    });
    CHECK(seen == a);
  }

  // Damage: one byte in the middle of a's second shard, one in v's first, one near the end of big.
  flip_in_dataset(file, "/param/a#1", 40 * 40 * 2 + 1);
  flip_in_dataset(file, "/exp_avg/v", 301);
  flip_in_dataset(file, "/param/big", 1100 * 4000 * 4 - 3);
  flip_in_dataset(file, "/param/s", 7);

  CheckpointReader rd = CheckpointReader::open(step);
  CHECK_NOTHROW(rd.verify());  // structure only: the damage is in the data
  // Whole-tensor reads (hashed in place), and partial reads that do not even cover the damaged byte (the
  // shard is read whole once): both fail, naming the file and the tensor.
  expect_corrupt([&] { rd.read("param/a", Slice::whole({64, 40})); }, file, "param/a");
  expect_corrupt([&] { CheckpointReader::open(step).read("param/a", Slice::rows({64, 40}, 60, 64)); }, file, "param/a");
  expect_corrupt([&] { CheckpointReader::open(step).read("param/a", Slice::box({30, 0}, {2, 3})); }, file, "param/a");
  expect_corrupt([&] { CheckpointReader::open(step).read("exp_avg/v", Slice::range(0, 10)); }, file, "exp_avg/v");
  expect_corrupt([&] { rd.read("param/big", Slice::rows({1100, 4000}, 0, 1)); }, file, "param/big");
  expect_corrupt([&] { rd.read("param/s", Slice::whole({})); }, file, "param/s");
  expect_corrupt([&] { CheckpointReader::open(step).verify(true); }, file, "exp_avg/v");  // the first key
  expect_corrupt([&] { CheckpointReader::open(step).verify_tensor("exp_avg/v"); }, file, "exp_avg/v");
  // Intact shards of the same tensors still read.
  CHECK(std::memcmp(rd.read("param/a", Slice::rows({64, 40}, 0, 24)).raw(), a.data(), 24 * 40 * 4) == 0);
  CHECK(std::memcmp(rd.read("exp_avg/v", Slice::range(300, 1000)).raw(), v.data() + 600, 1400) == 0);

  // A checkpoint of an older build (no "checksum" fields) loads, unverified; a malformed checksum does not.
  json m = json::parse(read_text(step + "/manifest.json"));
  for (auto& [key, t] : m["tensors"].items())
    for (auto& sh : t["shards"]) sh.erase("checksum");
  std::ofstream(step + "/manifest.json", std::ios::binary | std::ios::trunc) << m.dump(2);
  CheckpointReader legacy = CheckpointReader::open(step);
  CHECK_FALSE(legacy.has_checksums());
  CHECK(legacy.read("param/a", Slice::whole({64, 40})).numel() == 64 * 40);
  legacy.verify(true);
  m["tensors"]["param/s"]["shards"][0]["checksum"] = "xxh64:12";
  std::ofstream(step + "/manifest.json", std::ios::binary | std::ios::trunc) << m.dump(2);
  CHECK_THROWS_WITH_AS(CheckpointReader::open(step), doctest::Contains("tensor 'param/s': shards[0]: checksum"),
                       ConfigError);
}

TEST_CASE("HfTensorReader refuses NaN and Inf weights, naming the safetensors file, the tensor and the element") {
  TempDir tmp;
  const std::string dir = tmp.sub("model");
  fs::create_directories(dir);
  for (const char* f : {"config.json", "generation_config.json", "model.safetensors"})
    fs::copy_file(fs::path(DGEMMA_FIXTURES) / "model/tiny6" / f, fs::path(dir) / f);
  const std::string file = dir + "/model.safetensors";
  const ModelConfig config = load_model_config(dir);
  const std::string norm = "model.decoder.layers.2.input_layernorm.weight";  // f32 [32]
  const std::string experts = "model.decoder.layers.1.experts.gate_up_proj";  // f32 [8, 16, 32], transposed
  const HfName norm_native = hf_to_native(norm), experts_native = hf_to_native(experts);
  REQUIRE(experts_native.transposed);
  {  // before the damage everything reads
    const HfTensorReader r(dir, config);
    std::vector<float> buf(8 * 16 * 32);
    r.read(experts_native.name, 0, 8 * 16 * 32, buf.data());
  }
  auto poke = [&](const std::string& name, std::int64_t element, float value) {
    const SafetensorsFile f = SafetensorsFile::open(file);
    const std::uint64_t at = 8 + f.header_size() + f.entry(name).begin + static_cast<std::uint64_t>(element) * 4;
    std::fstream io(file, std::ios::in | std::ios::out | std::ios::binary);
    io.seekp(static_cast<std::streamoff>(at));
    io.write(reinterpret_cast<const char*>(&value), 4);
  };
  poke(norm, 7, NAN);
  poke(experts, 3 * 512 + 5 * 32 + 9, -INFINITY);  // HF [3, 5, 9] = native [3, 9, 5]
  const HfTensorReader r(dir, config);
  std::vector<float> buf(8 * 16 * 32);
  CHECK_THROWS_WITH_AS(r.read(norm_native.name, 0, 32, buf.data()),
                       doctest::Contains((file + ": tensor '" + norm + "': non-finite value nan at element 7").c_str()),
                       ConfigError);
  CHECK_THROWS_WITH_AS(r.read(norm_native.name, 4, 12, buf.data()), doctest::Contains("at element 7"), ConfigError);
  CHECK_NOTHROW(r.read(norm_native.name, 0, 7, buf.data()));  // the range without it
  CHECK_NOTHROW(r.read(norm_native.name, 8, 32, buf.data()));
  CHECK_THROWS_WITH_AS(r.read(experts_native.name, 0, 8 * 16 * 32, buf.data()),
                       doctest::Contains(("'" + experts + "': non-finite value -inf at element " +
                                          std::to_string(3 * 512 + 5 * 32 + 9)).c_str()),
                       ConfigError);
  const std::int64_t native_at = 3 * 512 + 9 * 16 + 5;
  CHECK_THROWS_AS(r.read(experts_native.name, native_at, native_at + 1, buf.data()), ConfigError);
  CHECK_NOTHROW(r.read(experts_native.name, 0, native_at, buf.data()));
  CHECK_NOTHROW(r.read(experts_native.name, native_at + 1, 8 * 16 * 32, buf.data()));
}

TEST_CASE("a data cursor state's integers are range-checked, not wrapped") {
  SftCursor cursor(10, 7, 2);
  json st = cursor.state();
  st["epoch"] = 18446744073709551615ull;  // would wrap to -1
  CHECK_THROWS_WITH_AS(cursor.restore(st),
                       doctest::Contains("data cursor state: 'epoch' must be an integer in [0, 9223372036854775807], "
                                         "got 18446744073709551615"),
                       ConfigError);
  st = cursor.state();
  st["position"] = 2.0;
  CHECK_THROWS_WITH_AS(cursor.restore(st), doctest::Contains("'position' must be an integer"), ConfigError);
  st = cursor.state();
  st["position"] = 4;
  cursor.restore(st);
  CHECK(cursor.position() == 4);
}
