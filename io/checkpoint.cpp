// Checkpoint slices and their geometry, the manifest (JSON form, validation, exact-tiling check) and the
// checkpoint directory layout (step names, `latest`, resolution). See io/checkpoint.h.
#include "io/checkpoint.h"

#include <algorithm>
#include <cctype>
#include <filesystem>
#include <fstream>
#include <limits>
#include <set>
#include <sstream>

#include "io/checkpoint_internal.h"
#include "io/data_check.h"

namespace dg {

namespace fs = std::filesystem;
using nlohmann::json;
using ckpt::Box;

std::string checkpoint_key(std::string_view role, std::string_view name) {
  return std::string(role) + "/" + std::string(name);
}

// ---- Slice --------------------------------------------------------------------------------------------
Slice Slice::box(Shape offset, Shape count) {
  Slice s;
  s.offset = std::move(offset), s.count = std::move(count);
  return s;
}
Slice Slice::whole(const Shape& global) { return box(Shape(global.size(), 0), global); }
Slice Slice::rows(const Shape& global, std::int64_t begin, std::int64_t end) {
  DG_CHECK(!global.empty(), "Slice::rows of a 0-d shape");
  Slice s = whole(global);
  s.offset[0] = begin, s.count[0] = end - begin;
  return s;
}
Slice Slice::range(std::int64_t begin, std::int64_t end) {
  Slice s;
  s.flat = true, s.begin = begin, s.end = end;
  return s;
}
std::int64_t Slice::numel() const { return flat ? end - begin : shape_numel(count); }
Shape Slice::local_shape() const { return flat ? Shape{end - begin} : count; }
std::string Slice::str() const {
  if (flat) return fmt::format("flat[{}:{}]", begin, end);
  std::string s = "[";
  if (offset.size() != count.size()) return fmt::format("box(offset {}, count {})", shape_str(offset), shape_str(count));
  for (std::size_t d = 0; d < count.size(); ++d) s += fmt::format("{}{}:{}", d ? ", " : "", offset[d], offset[d] + count[d]);
  return s + "]";
}

void check_slice(const Slice& s, const Shape& global, const std::string& what) {
  const std::int64_t n = shape_numel(global);
  if (s.flat) {
    if (s.begin < 0 || s.end < s.begin || s.end > n)
      fail_config("{}: flat range {} is outside a tensor of {} elements {}", what, s.str(), n, shape_str(global));
    return;
  }
  if (s.offset.size() != global.size() || s.count.size() != global.size())
    fail_config("{}: box with {} offsets and {} counts for a {}-d tensor {}", what, s.offset.size(), s.count.size(),
                global.size(), shape_str(global));
  for (std::size_t d = 0; d < global.size(); ++d)
    if (s.offset[d] < 0 || s.count[d] < 0 || s.offset[d] > global[d] - s.count[d])
      fail_config("{}: box {} is outside the tensor {} (dimension {})", what, s.str(), shape_str(global), d);
}

// ---- geometry -----------------------------------------------------------------------------------------
namespace ckpt {

std::int64_t linear_index(const Shape& idx, const Shape& dims) {
  std::int64_t lin = 0;
  for (std::size_t d = 0; d < dims.size(); ++d) lin = lin * dims[d] + idx[d];
  return lin;
}

std::vector<Box> flat_to_boxes(std::int64_t begin, std::int64_t end, const Shape& dims) {
  std::vector<Box> out;
  const std::size_t n = dims.size();
  if (n == 0) {  // a 0-d tensor: its one element
    if (begin < end) out.push_back(Box{});
    return out;
  }
  std::vector<std::int64_t> stride(n, 1);  // elements per step along each dimension
  for (std::size_t d = n; d-- > 1;) stride[d - 1] = stride[d] * dims[d];
  std::int64_t cur = begin;
  while (cur < end) {
    Shape idx(n);
    for (std::size_t d = 0; d < n; ++d) idx[d] = (cur / stride[d]) % dims[d];
    // The outermost dimension k at which `cur` is aligned and at least one whole step fits.
    for (std::size_t k = 0; k < n; ++k) {
      if (cur % stride[k] != 0) continue;
      const std::int64_t steps = std::min(dims[k] - idx[k], (end - cur) / stride[k]);
      if (steps < 1) continue;
      Box b{idx, Shape(n, 1)};
      b.count[k] = steps;
      for (std::size_t d = k + 1; d < n; ++d) b.count[d] = dims[d];
      out.push_back(std::move(b));
      cur += steps * stride[k];
      break;
    }
  }
  return out;
}

std::vector<Box> slice_boxes(const Slice& s, const Shape& dims) {
  if (s.flat) return flat_to_boxes(s.begin, s.end, dims);
  return {Box{s.offset, s.count}};
}

bool intersect(const Box& a, const Box& b, Box& out) {
  const std::size_t n = a.offset.size();
  out.offset.assign(n, 0), out.count.assign(n, 0);
  for (std::size_t d = 0; d < n; ++d) {
    const std::int64_t lo = std::max(a.offset[d], b.offset[d]);
    const std::int64_t hi = std::min(a.offset[d] + a.count[d], b.offset[d] + b.count[d]);
    if (hi <= lo) return false;
    out.offset[d] = lo, out.count[d] = hi - lo;
  }
  return true;
}

bool contiguous_in(const Box& inner, const Box& outer) {
  std::size_t d = inner.count.size();
  while (d > 0 && inner.count[d - 1] == outer.count[d - 1]) --d;  // whole trailing dimensions
  if (d == 0) return true;
  for (std::size_t i = 0; i + 1 < d; ++i)  // before the partial one, single indices only
    if (inner.count[i] != 1) return false;
  return true;
}

std::string box_str(const Box& b) { return Slice::box(b.offset, b.count).str(); }

bool valid_key(const std::string& key, std::string& why) {
  if (key.empty()) return why = "empty", false;
  std::size_t start = 0;
  while (true) {
    const std::size_t slash = key.find('/', start);
    const std::string part = key.substr(start, slash == std::string::npos ? std::string::npos : slash - start);
    if (part.empty() || part == "." || part == "..") return why = "empty, \".\" or \"..\" path component", false;
    for (const char c : part)
      if (!std::isalnum(static_cast<unsigned char>(c)) && c != '_' && c != '.' && c != '-')
        return why = fmt::format("character '{}' (allowed: A-Z a-z 0-9 _ . - /)", c), false;
    if (slash == std::string::npos) return true;
    start = slash + 1;
  }
}

std::string rank_file_name(int rank) { return fmt::format("rank_{:05d}.h5", rank); }

bool parse_dtype(const std::string& s, DType& out) {
  for (DType t : {DType::F32, DType::BF16, DType::F16, DType::I32, DType::I64})
    if (dtype_name(t) == s) return out = t, true;
  return false;
}

}  // namespace ckpt

// ---- manifest -----------------------------------------------------------------------------------------
namespace {

std::int64_t get_int(const json& v, const std::string& where) {
  if (!v.is_number_integer()) fail_config("{}: expected an integer, found {}", where, v.dump());
  if (v.is_number_unsigned() && v.get<std::uint64_t>() > static_cast<std::uint64_t>(INT64_MAX))
    fail_config("{}: {} is out of range", where, v.dump());
  return v.get<std::int64_t>();
}

const json& field(const json& obj, const char* name, const std::string& where) {
  const auto it = obj.find(name);
  if (it == obj.end()) fail_config("{}: missing field \"{}\"", where, name);
  return *it;
}

std::string get_string(const json& v, const std::string& where) {
  if (!v.is_string()) fail_config("{}: expected a string, found {}", where, v.dump());
  return v.get<std::string>();
}

Shape get_dims(const json& v, const std::string& where, bool allow_negative = false) {
  if (!v.is_array()) fail_config("{}: expected an array of integers, found {}", where, v.dump());
  Shape s;
  for (std::size_t i = 0; i < v.size(); ++i) {
    s.push_back(get_int(v[i], fmt::format("{}[{}]", where, i)));
    if (s.back() < 0 && !allow_negative) fail_config("{}[{}]: negative value {}", where, i, s.back());
  }
  return s;
}

bool plain_file_name(const std::string& f) {
  return !f.empty() && f != "." && f != ".." && f.find('/') == std::string::npos && f.find('\0') == std::string::npos;
}

// Exact tiling: no two shards overlap, and together they hold every element.
void check_tiling(const CheckpointTensor& t, const std::string& what) {
  struct Piece {
    Box box;
    std::size_t shard;
  };
  std::vector<Piece> pieces;
  std::int64_t covered = 0;
  for (std::size_t i = 0; i < t.shards.size(); ++i) {
    covered += t.shards[i].slice.numel();
    for (Box& b : ckpt::slice_boxes(t.shards[i].slice, t.shape))
      if (b.numel() > 0) pieces.push_back({std::move(b), i});
  }
  // Sweep along dimension 0: only pieces whose dim-0 ranges overlap are compared.
  auto lo = [](const Box& b) { return b.offset.empty() ? 0 : b.offset[0]; };
  auto hi = [](const Box& b) { return b.offset.empty() ? 1 : b.offset[0] + b.count[0]; };
  std::sort(pieces.begin(), pieces.end(), [&](const Piece& a, const Piece& b) { return lo(a.box) < lo(b.box); });
  std::vector<const Piece*> active;
  for (const Piece& p : pieces) {
    std::erase_if(active, [&](const Piece* a) { return hi(a->box) <= lo(p.box); });
    for (const Piece* a : active) {
      Box common;
      if (ckpt::intersect(a->box, p.box, common)) {
        const CheckpointShard &x = t.shards[a->shard], &y = t.shards[p.shard];
        fail_config("{}: tensor '{}': shard {} in {} and shard {} in {} overlap in {}", what, t.key, x.slice.str(),
                    x.file, y.slice.str(), y.file, ckpt::box_str(common));
      }
    }
    active.push_back(&p);
  }
  const std::int64_t n = shape_numel(t.shape);
  if (covered != n)
    fail_config("{}: tensor '{}' {}: its shards hold {} of its {} elements (a gap: a shard or a rank file's entry "
                "is missing)",
                what, t.key, shape_str(t.shape), covered, n);
}

}  // namespace

json CheckpointManifest::to_json() const {
  json tj = json::object();
  for (const auto& [key, t] : tensors) {
    json shards = json::array();
    for (const CheckpointShard& s : t.shards) {
      json e = {{"file", s.file}, {"dataset", s.dataset}};
      if (s.checksum) e["checksum"] = checksum_string(*s.checksum);
      if (s.slice.flat)
        e["flat"] = {s.slice.begin, s.slice.end};
      else
        e["offset"] = s.slice.offset, e["count"] = s.slice.count;
      shards.push_back(std::move(e));
    }
    tj[key] = {{"dtype", std::string(dtype_name(t.dtype))}, {"shape", t.shape}, {"shards", std::move(shards)}};
  }
  return json{{"format", std::string(kCheckpointFormat)},
              {"format_version", format_version},
              {"step", step},
              {"world_size", world_size},
              {"dgemma_version", dgemma_version},
              {"files", files},
              {"tensors", std::move(tj)},
              {"sections", sections},
              {"rank_sections", rank_sections}};
}

namespace {

std::string one_line(const json& j) {
  std::string out;
  if (j.is_array()) {
    out = "[";
    for (std::size_t i = 0; i < j.size(); ++i) out += (i ? ", " : "") + one_line(j[i]);
    return out + "]";
  }
  if (j.is_object()) {
    out = "{";
    for (auto it = j.begin(); it != j.end(); ++it)
      out += (it == j.begin() ? "" : ", ") + json(it.key()).dump() + ": " + one_line(it.value());
    return out + "}";
  }
  return j.dump();
}

void pretty(const json& j, std::size_t indent, std::size_t used, std::string& out) {
  std::string flat = one_line(j);
  if ((!j.is_array() && !j.is_object()) || j.empty() || used + flat.size() <= 160) {
    out += flat;
    return;
  }
  const std::string pad(indent + 2, ' ');
  out += j.is_array() ? "[\n" : "{\n";
  bool first = true;
  for (auto it = j.begin(); it != j.end(); ++it) {
    if (!first) out += ",\n";
    first = false;
    out += pad;
    std::size_t col = pad.size();
    if (j.is_object()) {
      const std::string k = json(it.key()).dump() + ": ";
      out += k;
      col += k.size();
    }
    pretty(it.value(), indent + 2, col, out);
  }
  out += "\n" + std::string(indent, ' ') + (j.is_array() ? "]" : "}");
}

}  // namespace

std::string CheckpointManifest::dump() const {
  std::string out;
  pretty(to_json(), 0, 0, out);
  return out + "\n";
}

CheckpointManifest CheckpointManifest::from_json(const json& j, const std::string& what) {
  if (!j.is_object()) fail_config("{}: not a JSON object", what);
  CheckpointManifest m;
  const std::string format = get_string(field(j, "format", what), what + ": format");
  if (format != kCheckpointFormat)
    fail_config("{}: format \"{}\" is not a dgemma checkpoint (expected \"{}\")", what, format, kCheckpointFormat);
  const std::int64_t version = get_int(field(j, "format_version", what), what + ": format_version");
  if (version != kCheckpointFormatVersion)
    fail_config("{}: format_version {} is not supported (this build reads version {})", what, version,
                kCheckpointFormatVersion);
  m.format_version = static_cast<int>(version);
  m.step = get_int(field(j, "step", what), what + ": step");
  if (m.step < 0) fail_config("{}: step {} is negative", what, m.step);
  const std::int64_t world = get_int(field(j, "world_size", what), what + ": world_size");
  if (world < 1 || world > (1 << 24)) fail_config("{}: world_size {} is out of range", what, world);
  m.world_size = static_cast<int>(world);
  if (j.contains("dgemma_version")) m.dgemma_version = get_string(j["dgemma_version"], what + ": dgemma_version");

  const json& files = field(j, "files", what);
  if (!files.is_array() || files.size() != static_cast<std::size_t>(m.world_size))
    fail_config("{}: files must be an array of world_size = {} file names", what, m.world_size);
  for (std::size_t i = 0; i < files.size(); ++i) {
    m.files.push_back(get_string(files[i], fmt::format("{}: files[{}]", what, i)));
    if (!plain_file_name(m.files.back()))
      fail_config("{}: files[{}] \"{}\" is not a plain file name", what, i, m.files.back());
  }

  const json& tensors = field(j, "tensors", what);
  if (!tensors.is_object()) fail_config("{}: tensors must be an object", what);
  for (const auto& [key, tj] : tensors.items()) {
    const std::string where = fmt::format("{}: tensor '{}'", what, key);
    if (std::string why; !ckpt::valid_key(key, why)) fail_config("{}: invalid name ({})", where, why);
    if (!tj.is_object()) fail_config("{}: expected an object", where);
    CheckpointTensor t;
    t.key = key;
    const std::string dt = get_string(field(tj, "dtype", where), where + ": dtype");
    if (!ckpt::parse_dtype(dt, t.dtype)) fail_config("{}: unknown dtype \"{}\" (expected f32, bf16, f16, i32 or i64)", where, dt);
    t.shape = get_dims(field(tj, "shape", where), where + ": shape");
    if (t.shape.size() > 32) fail_config("{}: shape has more than 32 dimensions", where);
    std::int64_t n = 1;
    for (const std::int64_t d : t.shape)
      if (__builtin_mul_overflow(n, d, &n)) fail_config("{}: shape {} overflows 64 bits", where, shape_str(t.shape));
    const json& shards = field(tj, "shards", where);
    if (!shards.is_array()) fail_config("{}: shards must be an array", where);
    for (std::size_t i = 0; i < shards.size(); ++i) {
      const std::string sw = fmt::format("{}: shards[{}]", where, i);
      const json& sj = shards[i];
      if (!sj.is_object()) fail_config("{}: expected an object", sw);
      CheckpointShard s;
      s.file = get_string(field(sj, "file", sw), sw + ": file");
      s.dataset = get_string(field(sj, "dataset", sw), sw + ": dataset");
      if (sj.contains("checksum")) {
        const std::string text = get_string(sj["checksum"], sw + ": checksum");
        std::uint64_t sum = 0;
        if (!parse_checksum(text, sum))
          fail_config("{}: checksum \"{}\" is not \"xxh64:\" followed by 16 lowercase hex digits", sw, text);
        s.checksum = sum;
      }
      if (sj.contains("flat")) {
        if (sj.contains("offset") || sj.contains("count")) fail_config("{}: both flat and offset/count", sw);
        const Shape r = get_dims(sj["flat"], sw + ": flat", true);
        if (r.size() != 2) fail_config("{}: flat must be [begin, end]", sw);
        s.slice = Slice::range(r[0], r[1]);
      } else {
        s.slice = Slice::box(get_dims(field(sj, "offset", sw), sw + ": offset", true),
                             get_dims(field(sj, "count", sw), sw + ": count", true));
      }
      t.shards.push_back(std::move(s));
    }
    m.tensors.emplace(key, std::move(t));
  }

  if (j.contains("sections")) {
    if (!j["sections"].is_object()) fail_config("{}: sections must be an object", what);
    m.sections = j["sections"];
  }
  if (j.contains("rank_sections")) {
    const json& rs = j["rank_sections"];
    if (!rs.is_object()) fail_config("{}: rank_sections must be an object", what);
    for (const auto& [name, v] : rs.items())
      if (!v.is_array() || v.size() != files.size())
        fail_config("{}: rank_sections.{} must be an array of world_size = {} values", what, name, m.world_size);
    m.rank_sections = rs;
  }
  m.validate(what);
  return m;
}

void CheckpointManifest::validate(const std::string& what) const {
  const std::set<std::string> known(files.begin(), files.end());
  if (known.size() != files.size()) fail_config("{}: a file is listed twice in files", what);
  std::set<std::pair<std::string, std::string>> datasets;
  for (const auto& [key, t] : tensors) {
    const std::string where = fmt::format("{}: tensor '{}'", what, key);
    for (const CheckpointShard& s : t.shards) {
      if (!known.count(s.file)) fail_config("{}: shard file \"{}\" is not one of the checkpoint's files", where, s.file);
      if (s.dataset.size() < 2 || s.dataset[0] != '/')
        fail_config("{}: dataset \"{}\" is not an absolute HDF5 path", where, s.dataset);
      if (!datasets.emplace(s.file, s.dataset).second)
        fail_config("{}: dataset {} of {} is named by two shards", where, s.dataset, s.file);
      check_slice(s.slice, t.shape, fmt::format("{}: shard in {}", where, s.file));
    }
    check_tiling(t, what);
  }
}

// ---- directories --------------------------------------------------------------------------------------
namespace {

std::optional<std::int64_t> parse_step_name(const std::string& name) {
  if (name.size() < 13 || name.size() > 23 || name.compare(0, 5, "step_") != 0) return std::nullopt;
  std::int64_t step = 0;
  for (std::size_t i = 5; i < name.size(); ++i) {
    if (!std::isdigit(static_cast<unsigned char>(name[i]))) return std::nullopt;
    if (__builtin_mul_overflow(step, 10, &step) || __builtin_add_overflow(step, name[i] - '0', &step))
      return std::nullopt;
  }
  return step;
}

bool is_complete(const std::string& step_dir) {
  std::error_code ec;
  return fs::is_regular_file(fs::path(step_dir) / "manifest.json", ec);
}

}  // namespace

std::string checkpoint_step_name(std::int64_t step) {
  DG_CHECK(step >= 0, "negative checkpoint step {}", step);
  return fmt::format("step_{:08d}", step);
}

std::string checkpoint_step_dir(const std::string& ckpt_dir, std::int64_t step) {
  return (fs::path(ckpt_dir) / checkpoint_step_name(step)).string();
}

std::vector<std::int64_t> list_checkpoint_steps(const std::string& ckpt_dir) {
  std::vector<std::int64_t> steps;
  std::error_code ec;
  for (fs::directory_iterator it(ckpt_dir, ec), end; !ec && it != end; it.increment(ec)) {
    const auto step = parse_step_name(it->path().filename().string());
    if (step && is_complete(it->path().string())) steps.push_back(*step);
  }
  std::sort(steps.begin(), steps.end());
  return steps;
}

std::optional<std::int64_t> latest_checkpoint_step(const std::string& ckpt_dir) {
  const std::string latest = (fs::path(ckpt_dir) / "latest").string();
  std::error_code ec;
  if (!fs::exists(latest, ec)) {
    const auto steps = list_checkpoint_steps(ckpt_dir);
    if (steps.empty()) return std::nullopt;
    return steps.back();
  }
  std::ifstream in(latest, std::ios::binary);
  std::string text(4096, '\0');
  in.read(text.data(), static_cast<std::streamsize>(text.size()));
  if (in.bad()) fail_config("cannot read {}", latest);
  text.resize(static_cast<std::size_t>(in.gcount()));
  while (!text.empty() && std::isspace(static_cast<unsigned char>(text.back()))) text.pop_back();
  const auto step = parse_step_name(text);
  if (!step) fail_config("{}: expected a step directory name like step_00001000, found \"{}\"", latest, text.substr(0, 64));
  const std::string dir = checkpoint_step_dir(ckpt_dir, *step);
  if (!is_complete(dir))
    fail_config("{} names {}, which is not a complete checkpoint (no {}/manifest.json)", latest, text, dir);
  return step;
}

std::string resolve_checkpoint_dir(const std::string& path) {
  std::string p = path;
  while (p.size() > 1 && p.back() == '/') p.pop_back();
  std::error_code ec;
  if (p.size() >= 4 && p.compare(p.size() - 4, 4, ".tmp") == 0)
    fail_config("{} is an incomplete checkpoint (a save in progress or one that crashed); load a step_* "
                "directory or the checkpoint directory",
                path);
  if (is_complete(p)) return p;
  if (!fs::is_directory(p, ec)) fail_config("checkpoint {} does not exist or is not a directory", path);
  if (parse_step_name(fs::path(p).filename().string()))
    fail_config("{} is not a complete checkpoint: no manifest.json", path);
  const auto step = latest_checkpoint_step(p);
  if (!step)
    fail_config("{} holds no checkpoint (no manifest.json, no latest file, no complete step_* directory)", path);
  return checkpoint_step_dir(p, *step);
}

}  // namespace dg
