// safetensors reader: the dtype table, header validation in the reference reader's order (plus the
// stricter checks listed in safetensors.h) and SafetensorsFile, an mmap'ed file handing out tensor views.
#include "io/safetensors.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <bit>
#include <cerrno>
#include <cstring>
#include <limits>

#include <fmt/ranges.h>

#include "io/strict_json.h"

namespace dg {

static_assert(std::endian::native == std::endian::little, "safetensors data is little-endian");

// ---- dtypes -------------------------------------------------------------------------------------------
namespace {
constexpr std::array<SafetensorsDType, 22> kDTypes{{
    {"BOOL", 8, 0, {}},        {"F4", 4, 1, {}},           {"F6_E2M3", 6, 2, {}},
    {"F6_E3M2", 6, 3, {}},     {"U8", 8, 4, {}},           {"I8", 8, 5, {}},
    {"F8_E5M2", 8, 6, {}},     {"F8_E4M3", 8, 7, {}},      {"F8_E8M0", 8, 8, {}},
    {"F8_E4M3FNUZ", 8, 9, {}}, {"F8_E5M2FNUZ", 8, 10, {}}, {"I16", 16, 11, {}},
    {"U16", 16, 12, {}},       {"F16", 16, 13, DType::F16}, {"BF16", 16, 14, DType::BF16},
    {"I32", 32, 15, DType::I32}, {"U32", 32, 16, {}},      {"F32", 32, 17, DType::F32},
    {"C64", 64, 18, {}},       {"F64", 64, 19, {}},        {"I64", 64, 20, DType::I64},
    {"U64", 64, 21, {}},
}};
}  // namespace

std::span<const SafetensorsDType> safetensors_dtypes() { return kDTypes; }

const SafetensorsDType* find_safetensors_dtype(std::string_view name) {
  for (const auto& d : kDTypes)
    if (d.name == name) return &d;
  return nullptr;
}

const SafetensorsDType& safetensors_dtype(DType t) {
  for (const auto& d : kDTypes)
    if (d.dtype == t) return d;
  fail("no safetensors dtype for {}", dtype_name(t));
}

TensorSpec TensorSpec::of(std::string name, const Tensor& t) {
  return {std::move(name), std::string(safetensors_dtype(t.dtype()).name), t.shape()};
}

// ---- header validation --------------------------------------------------------------------------------
namespace {

constexpr std::uint64_t kMaxHeaderSize = 100'000'000;

// Offset of the first byte that is not part of well-formed UTF-8 (Unicode Table 3-7, as Rust's
// str::from_utf8: no overlongs, no surrogates, nothing above U+10FFFF), or npos.
std::size_t invalid_utf8_at(std::string_view s) {
  const auto* p = reinterpret_cast<const unsigned char*>(s.data());
  const std::size_t n = s.size();
  std::size_t i = 0;
  while (i < n) {
    const unsigned c = p[i];
    if (c < 0x80) {
      ++i;
      continue;
    }
    int len = 0;
    unsigned lo = 0x80, hi = 0xBF;  // range of the second byte
    if (c >= 0xC2 && c <= 0xDF) len = 2;
    else if (c == 0xE0) len = 3, lo = 0xA0;
    else if ((c >= 0xE1 && c <= 0xEC) || c == 0xEE || c == 0xEF) len = 3;
    else if (c == 0xED) len = 3, hi = 0x9F;
    else if (c == 0xF0) len = 4, lo = 0x90;
    else if (c >= 0xF1 && c <= 0xF3) len = 4;
    else if (c == 0xF4) len = 4, hi = 0x8F;
    else return i;
    if (i + static_cast<std::size_t>(len) > n) return i;
    if (p[i + 1] < lo || p[i + 1] > hi) return i;
    for (int k = 2; k < len; ++k)
      if (p[i + k] < 0x80 || p[i + k] > 0xBF) return i;
    i += static_cast<std::size_t>(len);
  }
  return std::string_view::npos;
}

const char* json_type(const nlohmann::json& v) { return v.type_name(); }

// A JSON value that serde would accept as a usize (u64 here): an integer, not negative, not a float.
bool as_u64(const nlohmann::json& v, std::uint64_t& out) {
  if (v.is_number_unsigned()) {
    out = v.get<std::uint64_t>();
    return true;
  }
  if (v.is_number_integer() && v.get<std::int64_t>() >= 0) {
    out = static_cast<std::uint64_t>(v.get<std::int64_t>());
    return true;
  }
  return false;
}

struct RawEntry {
  SafetensorsEntry e;
  std::vector<std::uint64_t> dims;  // as in the file, before the signed-dimension check
};

[[noreturn]] void entry_error(const std::string& what, const std::string& name, const std::string& msg) {
  fail_config("{}: tensor \"{}\": {}", what, name, msg);
}

RawEntry parse_entry(const std::string& what, const std::string& name, const nlohmann::json& v) {
  RawEntry r;
  r.e.name = name;
  if (!v.is_object())
    entry_error(what, name,
                fmt::format("entry is a JSON {}, not an object with dtype, shape and data_offsets", json_type(v)));
  for (const char* field : {"dtype", "shape", "data_offsets"})
    if (!v.contains(field)) entry_error(what, name, fmt::format("missing field \"{}\"", field));

  const auto& dt = v.at("dtype");
  if (!dt.is_string()) entry_error(what, name, fmt::format("dtype is a JSON {}, not a string", json_type(dt)));
  const SafetensorsDType* t = find_safetensors_dtype(dt.get_ref<const std::string&>());
  if (!t) entry_error(what, name, fmt::format("unknown dtype \"{}\"", dt.get_ref<const std::string&>()));
  r.e.dtype = std::string(t->name);
  r.e.type = t->dtype;
  r.e.bits = t->bits;

  const auto& shape = v.at("shape");
  if (!shape.is_array()) entry_error(what, name, fmt::format("shape is a JSON {}, not an array", json_type(shape)));
  for (std::size_t i = 0; i < shape.size(); ++i) {
    std::uint64_t d = 0;
    if (!as_u64(shape[i], d))
      entry_error(what, name, fmt::format("shape entry {} ({}) is not a non-negative integer", i, shape[i].dump()));
    r.dims.push_back(d);
  }

  const auto& off = v.at("data_offsets");
  if (!off.is_array() || off.size() != 2 || !as_u64(off[0], r.e.begin) || !as_u64(off[1], r.e.end))
    entry_error(what, name, fmt::format("data_offsets {} is not an array of two non-negative integers", off.dump()));
  return r;
}

}  // namespace

SafetensorsHeader parse_safetensors(std::span<const std::byte> file, const std::string& what) {
  const std::uint64_t size = file.size();
  // 1. HeaderTooSmall
  if (size < 8) fail_config("{}: not a safetensors file: {} bytes, shorter than the 8-byte header length", what, size);
  std::uint64_t n = 0;
  std::memcpy(&n, file.data(), 8);  // little-endian host (static_assert above)
  // 2. HeaderTooLarge
  if (n > kMaxHeaderSize)
    fail_config("{}: header length {} exceeds the limit of {} bytes (not a safetensors file?)", what, n, kMaxHeaderSize);
  // 3. InvalidHeaderLength
  if (8 + n > size) fail_config("{}: header length {} runs past the end of the file ({} bytes)", what, n, size);
  // 4. InvalidHeader
  const std::string_view text(reinterpret_cast<const char*>(file.data()) + 8, static_cast<std::size_t>(n));
  if (const auto bad = invalid_utf8_at(text); bad != std::string_view::npos)
    fail_config("{}: header is not valid UTF-8 (byte 0x{:02x} at header offset {})", what,
                static_cast<unsigned char>(text[bad]), bad);

  // 5. InvalidHeaderDeserialization (+ duplicate keys, NUL bytes, nesting)
  const nlohmann::json j = parse_json_strict(text, what + ": header");
  if (!j.is_object()) fail_config("{}: header is a JSON {}, not an object", what, json_type(j));
  SafetensorsHeader h;
  h.header_size = n;
  std::vector<RawEntry> raw;
  for (const auto& [key, v] : j.items()) {  // nlohmann objects are key-sorted: deterministic messages
    if (key == "__metadata__") {
      if (v.is_null()) continue;
      if (!v.is_object()) fail_config("{}: __metadata__ is a JSON {}, not an object of strings", what, json_type(v));
      std::map<std::string, std::string> m;
      for (const auto& [mk, mv] : v.items()) {
        if (!mv.is_string())
          fail_config("{}: __metadata__ value of \"{}\" is a JSON {}, not a string", what, mk, json_type(mv));
        m.emplace(mk, mv.get<std::string>());
      }
      h.metadata = std::move(m);
      continue;
    }
    raw.push_back(parse_entry(what, key, v));
  }

  // 6-9. Metadata::validate: sort by (begin, end), then walk.
  std::stable_sort(raw.begin(), raw.end(), [](const RawEntry& a, const RawEntry& b) {
    return std::pair(a.e.begin, a.e.end) < std::pair(b.e.begin, b.e.end);
  });
  std::uint64_t start = 0;
  for (RawEntry& r : raw) {
    SafetensorsEntry& e = r.e;
    if (e.begin != start || e.end < e.begin) {
      if (e.end < e.begin)
        fail_config("{}: tensor \"{}\": invalid data_offsets [{}, {}]: end before begin", what, e.name, e.begin, e.end);
      fail_config("{}: tensor \"{}\": invalid data_offsets [{}, {}]: expected to begin at {} ({})", what, e.name,
                  e.begin, e.end, start, e.begin < start ? "overlaps the previous tensor" : "leaves a gap");
    }
    start = e.end;
    std::uint64_t numel = 1, nbits = 0;
    for (std::uint64_t d : r.dims)
      if (__builtin_mul_overflow(numel, d, &numel))
        fail_config("{}: tensor \"{}\": element count of shape {} overflows 64 bits", what, e.name, r.dims);
    if (__builtin_mul_overflow(numel, static_cast<std::uint64_t>(e.bits), &nbits))
      fail_config("{}: tensor \"{}\": bit size of {} x {} overflows 64 bits", what, e.name, e.dtype, r.dims);
    if (nbits % 8 != 0)
      fail_config("{}: tensor \"{}\": {} elements of {} bits do not fill whole bytes", what, e.name, numel, e.dtype);
    if (e.end - e.begin != nbits / 8)
      fail_config("{}: tensor \"{}\": data_offsets [{}, {}] hold {} bytes but {} {} needs {} bytes", what, e.name,
                  e.begin, e.end, e.end - e.begin, e.dtype, r.dims, nbits / 8);
    for (std::uint64_t d : r.dims) {
      if (d > static_cast<std::uint64_t>(std::numeric_limits<std::int64_t>::max()))
        fail_config("{}: tensor \"{}\": dimension {} is too large", what, e.name, d);
      e.shape.push_back(static_cast<std::int64_t>(d));
    }
  }
  // 10. MetadataIncompleteBuffer
  if (start != size - 8 - n)
    fail_config("{}: data buffer is {} bytes but the tensors cover {} bytes ({})", what, size - 8 - n, start,
                start < size - 8 - n ? "trailing bytes after the last tensor" : "file is truncated");
  h.data_size = start;
  h.entries.reserve(raw.size());
  for (RawEntry& r : raw) h.entries.push_back(std::move(r.e));
  return h;
}

// ---- SafetensorsFile ----------------------------------------------------------------------------------
struct SafetensorsFile::Mapping {
  void* addr = nullptr;
  std::size_t len = 0;
  Mapping() = default;
  Mapping(const Mapping&) = delete;
  Mapping& operator=(const Mapping&) = delete;
  ~Mapping() {
    if (addr) ::munmap(addr, len);
  }
  const std::byte* data() const { return static_cast<const std::byte*>(addr); }
};

std::string_view SafetensorsFile::header_text() const {
  return {reinterpret_cast<const char*>(map_->data()) + 8, static_cast<std::size_t>(header_.header_size)};
}

SafetensorsFile SafetensorsFile::open(const std::string& path) {
  SafetensorsFile f;
  f.path_ = path;
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) fail_config("cannot open safetensors file {}: {}", path, std::strerror(errno));
  struct stat st;
  if (::fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
    ::close(fd);
    fail_config("cannot read safetensors file {}: not a regular file", path);
  }
  auto map = std::make_shared<Mapping>();
  map->len = static_cast<std::size_t>(st.st_size);
  if (map->len >= 8) {
    void* a = ::mmap(nullptr, map->len, PROT_READ, MAP_PRIVATE, fd, 0);
    if (a == MAP_FAILED) {
      const int e = errno;
      ::close(fd);
      fail("cannot map safetensors file {} ({} bytes): {}", path, map->len, std::strerror(e));
    }
    map->addr = a;
  }
  ::close(fd);  // the mapping keeps the file
  f.header_ = parse_safetensors(std::span<const std::byte>(map->data(), map->len), path);
  f.map_ = std::move(map);
  for (std::size_t i = 0; i < f.header_.entries.size(); ++i) f.index_.emplace(f.header_.entries[i].name, i);
  return f;
}

std::uint64_t SafetensorsFile::file_size() const { return map_ ? map_->len : 0; }

const SafetensorsEntry* SafetensorsFile::find(std::string_view name) const {
  const auto it = index_.find(std::string(name));
  return it == index_.end() ? nullptr : &header_.entries[it->second];
}

const SafetensorsEntry& SafetensorsFile::entry(std::string_view name) const {
  const SafetensorsEntry* e = find(name);
  if (!e) fail_config("{}: no tensor \"{}\" in this file", path_, name);
  return *e;
}

std::span<const std::byte> SafetensorsFile::bytes(std::string_view name) const {
  const SafetensorsEntry& e = entry(name);
  return {map_->data() + 8 + header_.header_size + e.begin, static_cast<std::size_t>(e.nbytes())};
}

void SafetensorsFile::release(std::string_view name, std::uint64_t begin, std::uint64_t end) const {
  const SafetensorsEntry& e = entry(name);
  end = std::min(end, e.nbytes());
  if (!map_ || !map_->addr || begin >= end) return;
  const std::uint64_t page = static_cast<std::uint64_t>(::sysconf(_SC_PAGESIZE));
  const std::uint64_t at = 8 + header_.header_size + e.begin;
  const std::uint64_t from = (at + begin) / page * page;
  const std::uint64_t to = std::min<std::uint64_t>(map_->len, (at + end + page - 1) / page * page);
  // A read-only private mapping of a file: the pages are dropped here and read back from the file (the
  // page cache) when touched again. A refusal only costs memory.
  ::madvise(static_cast<char*>(map_->addr) + from, to - from, MADV_DONTNEED);
}

Tensor SafetensorsFile::tensor(std::string_view name) const {
  const SafetensorsEntry& e = entry(name);
  if (!e.type)
    fail_config("{}: tensor \"{}\" has dtype {}, which dgemma does not compute with (its bytes can only be copied)",
                path_, name, e.dtype);
  const std::span<const std::byte> b = bytes(name);
  void* p = const_cast<std::byte*>(b.data());  // read-only mapping: views must not be written
  if (reinterpret_cast<std::uintptr_t>(p) % dtype_size(*e.type) == 0) return Tensor::view_of(p, e.shape, *e.type);
  Tensor t = Tensor::empty(e.shape, *e.type);  // unaligned (a writer that does not sort): copy
  if (!b.empty()) std::memcpy(t.raw(), b.data(), b.size());
  return t;
}

}  // namespace dg
