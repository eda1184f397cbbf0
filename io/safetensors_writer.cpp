// safetensors writer: the reference writer's layout (sort by dtype enum order descending, then name;
// compact JSON header with __metadata__ first, padded with spaces to a multiple of 8) and a streaming,
// atomic SafetensorsWriter that takes each tensor's bytes in any order.
#include <fmt/ranges.h>

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

#include "io/atomic_file.h"
#include "io/safetensors.h"

namespace dg {

namespace {

constexpr std::uint64_t kMaxHeaderSize = 100'000'000;

bool valid_utf8(std::string_view s) {
  // Decoding is the reader's job; here a name only has to be well-formed so the header stays valid.
  const auto* p = reinterpret_cast<const unsigned char*>(s.data());
  std::size_t i = 0, n = s.size();
  while (i < n) {
    const unsigned c = p[i];
    int len = c < 0x80 ? 1 : (c >= 0xC2 && c <= 0xDF) ? 2 : (c >= 0xE0 && c <= 0xEF) ? 3 : (c >= 0xF0 && c <= 0xF4) ? 4 : 0;
    if (len == 0 || i + static_cast<std::size_t>(len) > n) return false;
    unsigned lo = 0x80, hi = 0xBF;
    if (c == 0xE0) lo = 0xA0;
    if (c == 0xED) hi = 0x9F;
    if (c == 0xF0) lo = 0x90;
    if (c == 0xF4) hi = 0x8F;
    for (int k = 1; k < len; ++k) {
      const unsigned b = p[i + k];
      if (b < (k == 1 ? lo : 0x80u) || b > (k == 1 ? hi : 0xBFu)) return false;
    }
    i += static_cast<std::size_t>(len);
  }
  return true;
}

// A JSON string as serde_json writes it: ", \ and control characters escaped (\b \t \n \f \r short,
// the rest \u00xx with lowercase hex); everything else, non-ASCII included, as is.
void append_json_string(std::string& out, std::string_view s) {
  out += '"';
  for (const char ch : s) {
    const auto c = static_cast<unsigned char>(ch);
    switch (c) {
      case '"': out += "\\\""; break;
      case '\\': out += "\\\\"; break;
      case '\b': out += "\\b"; break;
      case '\t': out += "\\t"; break;
      case '\n': out += "\\n"; break;
      case '\f': out += "\\f"; break;
      case '\r': out += "\\r"; break;
      default:
        if (c < 0x20) out += fmt::format("\\u{:04x}", c);
        else out += ch;
    }
  }
  out += '"';
}

}  // namespace

std::vector<SafetensorsEntry> plan_safetensors_layout(std::vector<TensorSpec> tensors, const std::string& what,
                                                      bool keep_order) {
  std::vector<SafetensorsEntry> out;
  std::vector<int> order;
  out.reserve(tensors.size());
  for (TensorSpec& t : tensors) {
    const SafetensorsDType* d = find_safetensors_dtype(t.dtype);
    if (!d) fail_config("{}: tensor \"{}\": unknown safetensors dtype \"{}\"", what, t.name, t.dtype);
    if (t.name == "__metadata__") fail_config("{}: a tensor cannot be named __metadata__", what);
    if (!valid_utf8(t.name)) fail_config("{}: tensor name \"{}\" is not valid UTF-8", what, t.name);
    std::uint64_t numel = 1, nbits = 0;
    for (std::int64_t dim : t.shape) {
      if (dim < 0) fail_config("{}: tensor \"{}\": negative dimension in shape {}", what, t.name, shape_str(t.shape));
      if (__builtin_mul_overflow(numel, static_cast<std::uint64_t>(dim), &numel))
        fail_config("{}: tensor \"{}\": shape {} overflows 64 bits", what, t.name, shape_str(t.shape));
    }
    if (__builtin_mul_overflow(numel, static_cast<std::uint64_t>(d->bits), &nbits))
      fail_config("{}: tensor \"{}\": shape {} overflows 64 bits", what, t.name, shape_str(t.shape));
    if (nbits % 8 != 0)
      fail_config("{}: tensor \"{}\": {} elements of {} do not fill whole bytes", what, t.name, numel, t.dtype);
    SafetensorsEntry e;
    e.name = std::move(t.name);
    e.dtype = std::string(d->name);
    e.type = d->dtype;
    e.bits = d->bits;
    e.shape = std::move(t.shape);
    e.end = nbits / 8;  // the size, until offsets are assigned below
    out.push_back(std::move(e));
    order.push_back(d->order);
  }
  std::vector<std::size_t> idx(out.size());
  for (std::size_t i = 0; i < idx.size(); ++i) idx[i] = i;
  if (!keep_order) std::sort(idx.begin(), idx.end(), [&](std::size_t a, std::size_t b) {
    if (order[a] != order[b]) return order[a] > order[b];
    return out[a].name < out[b].name;  // bytewise, as Rust's String ordering
  });
  std::vector<SafetensorsEntry> sorted;
  sorted.reserve(out.size());
  std::uint64_t offset = 0;
  for (std::size_t i : idx) {
    SafetensorsEntry e = std::move(out[i]);
    const std::uint64_t n = e.end;
    e.begin = offset;
    e.end = offset + n;
    offset += n;
    sorted.push_back(std::move(e));
  }
  // A name given twice, with the same dtype or not.
  std::vector<std::string_view> all;
  for (const auto& e : sorted) all.push_back(e.name);
  std::sort(all.begin(), all.end());
  if (const auto it = std::adjacent_find(all.begin(), all.end()); it != all.end())
    fail_config("{}: tensor \"{}\" appears twice", what, *it);
  return sorted;
}

std::string safetensors_header_json(const std::vector<SafetensorsEntry>& layout,
                                    const std::optional<std::map<std::string, std::string>>& metadata) {
  std::string h = "{";
  if (metadata) {
    h += "\"__metadata__\":{";
    bool first = true;
    for (const auto& [k, v] : *metadata) {
      if (!first) h += ',';
      first = false;
      append_json_string(h, k);
      h += ':';
      append_json_string(h, v);
    }
    h += '}';
  }
  for (const auto& e : layout) {
    if (h.size() > 1) h += ',';
    append_json_string(h, e.name);
    h += fmt::format(":{{\"dtype\":\"{}\",\"shape\":[{}],\"data_offsets\":[{},{}]}}", e.dtype, fmt::join(e.shape, ","),
                     e.begin, e.end);
  }
  h += '}';
  h.append((8 - h.size() % 8) % 8, ' ');
  return h;
}

// ---- SafetensorsWriter --------------------------------------------------------------------------------
struct SafetensorsWriter::Impl : AtomicFile {
  using AtomicFile::AtomicFile;
};

SafetensorsWriter::SafetensorsWriter(std::string path, std::vector<TensorSpec> tensors, SafetensorsWriteOptions opts) {
  layout_ = plan_safetensors_layout(std::move(tensors), path, opts.keep_order);
  if (opts.metadata)
    for (const auto& [k, v] : *opts.metadata)
      if (!valid_utf8(k) || !valid_utf8(v)) fail_config("{}: __metadata__ entry \"{}\" is not valid UTF-8", path, k);
  const std::string header = opts.header ? *opts.header : safetensors_header_json(layout_, opts.metadata);
  if (header.size() > kMaxHeaderSize)
    fail_config("{}: header of {} bytes exceeds the safetensors limit of {} bytes", path, header.size(), kMaxHeaderSize);
  for (std::size_t i = 0; i < layout_.size(); ++i) index_.emplace(layout_[i].name, i);
  done_.assign(layout_.size(), false);
  file_ = std::make_unique<Impl>(std::move(path), opts.overwrite);
  const std::uint64_t n = header.size();
  file_->write_at(0, &n, 8);
  file_->write_at(8, header.data(), header.size());
  data_start_ = 8 + n;
}

SafetensorsWriter::~SafetensorsWriter() = default;

const std::string& SafetensorsWriter::path() const { return file_->path(); }

bool SafetensorsWriter::written(std::string_view name) const {
  const auto it = index_.find(std::string(name));
  return it != index_.end() && done_[it->second];
}

void SafetensorsWriter::write(std::string_view name, const void* data, std::size_t nbytes) {
  const auto it = index_.find(std::string(name));
  if (it == index_.end()) fail("{}: tensor \"{}\" is not one of the tensors planned for this file", path(), name);
  const SafetensorsEntry& e = layout_[it->second];
  if (done_[it->second]) fail("{}: tensor \"{}\" written twice", path(), name);
  if (nbytes != e.nbytes())
    fail("{}: tensor \"{}\": {} bytes given but {} {} takes {} bytes", path(), name, nbytes, e.dtype,
         shape_str(e.shape), e.nbytes());
  if (nbytes > 0) file_->write_at(data_start_ + e.begin, data, nbytes);
  done_[it->second] = true;
}

void SafetensorsWriter::write(std::string_view name, const Tensor& t) {
  const auto it = index_.find(std::string(name));
  if (it == index_.end()) fail("{}: tensor \"{}\" is not one of the tensors planned for this file", path(), name);
  const SafetensorsEntry& e = layout_[it->second];
  if (e.type != t.dtype() || e.shape != t.shape())
    fail("{}: tensor \"{}\" planned as {} {} but given {}", path(), name, e.dtype, shape_str(e.shape), t.describe());
  if (t.is_cpu()) {
    write(name, t.raw(), t.nbytes());
  } else {
    const Tensor host = t.to(Device::CPU);
    write(name, host.raw(), host.nbytes());
  }
}

void SafetensorsWriter::finish() {
  for (std::size_t i = 0; i < layout_.size(); ++i)
    if (!done_[i]) fail("{}: tensor \"{}\" was never written", path(), layout_[i].name);
  file_->commit();
}

// ---- one file, several writers ------------------------------------------------------------------------
SafetensorsFilePlan plan_safetensors_file(std::string path, std::vector<TensorSpec> tensors,
                                          const SafetensorsWriteOptions& opts) {
  SafetensorsFilePlan p;
  p.layout = plan_safetensors_layout(std::move(tensors), path, opts.keep_order);
  if (opts.metadata)
    for (const auto& [k, v] : *opts.metadata)
      if (!valid_utf8(k) || !valid_utf8(v)) fail_config("{}: __metadata__ entry \"{}\" is not valid UTF-8", path, k);
  p.header = opts.header ? *opts.header : safetensors_header_json(p.layout, opts.metadata);
  if (p.header.size() > kMaxHeaderSize)
    fail_config("{}: header of {} bytes exceeds the safetensors limit of {} bytes", path, p.header.size(), kMaxHeaderSize);
  p.data_start = 8 + p.header.size();
  p.path = std::move(path);
  return p;
}

const SafetensorsEntry& SafetensorsFilePlan::entry(std::string_view name) const {
  for (const SafetensorsEntry& e : layout)
    if (e.name == name) return e;
  fail("{}: tensor \"{}\" is not one of the tensors planned for this file", path, name);
}


void create_safetensors_file(const SafetensorsFilePlan& plan) {
  const int fd = ::open(plan.path.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
  if (fd < 0) fail("cannot create {}: {}", plan.path, std::strerror(errno));
  try {
    const std::uint64_t n = plan.header.size();
    pwrite_all(fd, plan.path, "the header", 0, &n, 8);
    pwrite_all(fd, plan.path, "the header", 8, plan.header.data(), plan.header.size());
    if (::ftruncate(fd, static_cast<off_t>(plan.file_size())) != 0)
      fail("{}: cannot size the file to {} bytes: {}", plan.path, plan.file_size(), std::strerror(errno));
  } catch (...) {
    ::close(fd);
    throw;
  }
  ::close(fd);
}

SafetensorsPartWriter::SafetensorsPartWriter(const SafetensorsFilePlan& plan) : plan_(plan), file_(plan.path) {}

SafetensorsPartWriter::~SafetensorsPartWriter() = default;

void SafetensorsPartWriter::write(std::string_view name, std::uint64_t offset, const void* data, std::size_t n) {
  const SafetensorsEntry& e = plan_.entry(name);
  if (offset > e.nbytes() || n > e.nbytes() - offset)
    fail("{}: tensor \"{}\": bytes [{}, {}) given, but it has {} bytes", plan_.path, name, offset, offset + n, e.nbytes());
  file_.write_at(plan_.data_start + e.begin + offset, data, n, fmt::format("tensor \"{}\"", name));
}

void SafetensorsPartWriter::sync() { file_.sync(); }

void save_safetensors(const std::string& path, const std::vector<std::pair<std::string, Tensor>>& tensors,
                      SafetensorsWriteOptions opts) {
  std::vector<TensorSpec> specs;
  for (const auto& [name, t] : tensors) specs.push_back(TensorSpec::of(name, t));
  SafetensorsWriter w(path, std::move(specs), std::move(opts));
  for (const auto& [name, t] : tensors) w.write(name, t);
  w.finish();
}

}  // namespace dg
