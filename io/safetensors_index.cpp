// Sharded safetensors (formats.md §1.6): huggingface_hub's shard split, model.safetensors.index.json as
// transformers writes it, ShardedSafetensorsWriter (shards first, index last) and ShardedSafetensors, the
// validating reader of a directory, an index or a single file.
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <cmath>
#include <fstream>
#include <sstream>

#include "io/atomic_file.h"
#include "io/safetensors.h"
#include "io/strict_json.h"

namespace dg {

// ---- sizes --------------------------------------------------------------------------------------------
std::uint64_t parse_byte_size(std::string_view text) {
  auto bad = [&]() -> std::uint64_t {
    fail_config("invalid size \"{}\" (expected a number of bytes or e.g. 5GB, 500MB, 2GiB)", text);
  };
  std::string s(text);
  while (!s.empty() && std::isspace(static_cast<unsigned char>(s.back()))) s.pop_back();
  while (!s.empty() && std::isspace(static_cast<unsigned char>(s.front()))) s.erase(s.begin());
  if (s.empty()) return bad();
  std::size_t unit_at = s.size();
  while (unit_at > 0 && std::isalpha(static_cast<unsigned char>(s[unit_at - 1]))) --unit_at;
  std::string unit = s.substr(unit_at), number = s.substr(0, unit_at);
  while (!number.empty() && std::isspace(static_cast<unsigned char>(number.back()))) number.pop_back();
  for (auto& c : unit) c = static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
  static const std::pair<const char*, double> kUnits[] = {
      {"", 1.0},       {"B", 1.0},          {"KB", 1e3},       {"MB", 1e6},           {"GB", 1e9},
      {"TB", 1e12},    {"KIB", 1024.0},     {"MIB", 1048576.0}, {"GIB", 1073741824.0}, {"TIB", 1099511627776.0}};
  double mult = 0;
  for (const auto& [u, m] : kUnits)
    if (unit == u) mult = m;
  if (mult == 0 || number.empty()) return bad();
  if (unit.empty() || unit == "B") {  // whole bytes
    if (!std::all_of(number.begin(), number.end(), [](char c) { return std::isdigit(static_cast<unsigned char>(c)); }))
      return bad();
    try {
      const auto v = std::stoull(number);
      return v > 0 ? v : bad();
    } catch (const std::exception&) {
      return bad();
    }
  }
  std::size_t used = 0;
  double v = 0;
  try {
    v = std::stod(number, &used);
  } catch (const std::exception&) {
    return bad();
  }
  if (used != number.size() || !(v > 0) || !std::isfinite(v) || v * mult >= 1.8e19) return bad();
  const auto bytes = static_cast<std::uint64_t>(v * mult);  // int(float * unit), as huggingface_hub
  return bytes > 0 ? bytes : bad();
}

// ---- plan ---------------------------------------------------------------------------------------------
ShardPlan plan_shards(const std::vector<TensorSpec>& tensors, std::uint64_t max_shard_size) {
  // Validates dtypes, shapes and names the way the writer will, and gives each tensor's byte size.
  const std::vector<SafetensorsEntry> layout = plan_safetensors_layout(tensors, "shard plan");
  std::unordered_map<std::string_view, std::uint64_t> size_of;
  for (const auto& e : layout) size_of.emplace(e.name, e.nbytes());

  ShardPlan plan;
  std::vector<std::vector<TensorSpec>> shards;
  std::vector<TensorSpec> current;
  std::uint64_t current_size = 0;
  for (const TensorSpec& t : tensors) {
    const std::uint64_t n = size_of.at(t.name);
    plan.total_size += n;
    plan.total_parameters += static_cast<std::uint64_t>(shape_numel(t.shape));
    if (n > max_shard_size) {  // its own shard, placed before the one being filled (as huggingface_hub)
      shards.push_back({t});
      continue;
    }
    if (current_size + n > max_shard_size) {
      shards.push_back(std::move(current));
      current.clear();
      current_size = 0;
    }
    current.push_back(t);
    current_size += n;
  }
  if (!current.empty() || shards.empty()) shards.push_back(std::move(current));  // no tensors: one empty file

  const std::size_t count = shards.size();
  for (std::size_t i = 0; i < count; ++i) {
    const std::string file =
        count == 1 ? std::string(kSafetensorsSingleName) : fmt::format("model-{:05d}-of-{:05d}.safetensors", i + 1, count);
    for (const auto& t : shards[i]) plan.weight_map.emplace(t.name, file);
    plan.files.push_back(file);
  }
  plan.tensors = std::move(shards);
  return plan;
}

std::string shard_index_json(const ShardPlan& plan, std::optional<std::uint64_t> total_parameters) {
  nlohmann::json j;  // std::map objects: keys come out sorted, as json.dumps(sort_keys=True)
  j["metadata"]["total_size"] = plan.total_size;
  j["metadata"]["total_parameters"] = total_parameters.value_or(plan.total_parameters);
  j["weight_map"] = nlohmann::json::object();
  for (const auto& [name, file] : plan.weight_map) j["weight_map"][name] = file;
  return j.dump(2, ' ', /*ensure_ascii=*/true) + "\n";  // json.dumps(indent=2) + "\n"
}

std::string shard_index_json_with_metadata(const ShardPlan& plan, const nlohmann::json& metadata) {
  nlohmann::json j = nlohmann::json::object();
  if (!metadata.is_null()) j["metadata"] = metadata;
  j["weight_map"] = nlohmann::json::object();
  for (const auto& [name, file] : plan.weight_map) j["weight_map"][name] = file;
  return j.dump(2, ' ', /*ensure_ascii=*/true) + "\n";
}

// ---- ShardedSafetensorsWriter -------------------------------------------------------------------------
ShardedSafetensorsWriter::ShardedSafetensorsWriter(std::string dir, const std::vector<TensorSpec>& tensors,
                                                   std::uint64_t max_shard_size, SafetensorsWriteOptions opts)
    : dir_(std::move(dir)), opts_(std::move(opts)), plan_(plan_shards(tensors, max_shard_size)) {
  struct stat st;
  if (::stat(dir_.c_str(), &st) != 0 || !S_ISDIR(st.st_mode))
    fail_config("output directory {} does not exist", dir_);
  const std::string index = dir_ + "/" + std::string(kSafetensorsIndexName);
  if (!opts_.overwrite && path_exists(index))
    fail_config("output {} already exists (not overwriting it; remove it or ask to overwrite)", index);
  for (const auto& file : plan_.files)  // each refuses an existing file unless overwriting
    if (!opts_.overwrite && path_exists(dir_ + "/" + file))
      fail_config("output {}/{} already exists (not overwriting it; remove it or ask to overwrite)", dir_, file);
  for (std::size_t i = 0; i < plan_.files.size(); ++i) {
    shards_.push_back(std::make_unique<SafetensorsWriter>(dir_ + "/" + plan_.files[i], plan_.tensors[i], opts_));
    for (const auto& t : plan_.tensors[i]) shard_of_.emplace(t.name, i);
  }
}

ShardedSafetensorsWriter::~ShardedSafetensorsWriter() = default;

void ShardedSafetensorsWriter::write(std::string_view name, const void* data, std::size_t nbytes) {
  const auto it = shard_of_.find(std::string(name));
  if (it == shard_of_.end()) fail("{}: tensor \"{}\" is not one of the tensors planned for this model", dir_, name);
  shards_[it->second]->write(name, data, nbytes);
}

void ShardedSafetensorsWriter::write(std::string_view name, const Tensor& t) {
  const auto it = shard_of_.find(std::string(name));
  if (it == shard_of_.end()) fail("{}: tensor \"{}\" is not one of the tensors planned for this model", dir_, name);
  shards_[it->second]->write(name, t);
}

void ShardedSafetensorsWriter::finish(std::optional<std::uint64_t> total_parameters) {
  for (const auto& s : shards_)  // everything written before anything is committed
    for (const auto& e : s->layout())
      if (!s->written(e.name)) fail("{}: tensor \"{}\" was never written", s->path(), e.name);
  const std::string index = dir_ + "/" + std::string(kSafetensorsIndexName);
  if (opts_.overwrite) ::unlink(index.c_str());  // a stale index must never describe new shards
  for (const auto& s : shards_) s->finish();
  if (plan_.sharded()) write_file_atomic(index, shard_index_json(plan_, total_parameters), opts_.overwrite);
}

// ---- ShardedSafetensors -------------------------------------------------------------------------------
namespace {

bool is_dir(const std::string& p) {
  struct stat st;
  return ::stat(p.c_str(), &st) == 0 && S_ISDIR(st.st_mode);
}

std::string dir_of(const std::string& path) {
  const auto slash = path.find_last_of('/');
  return slash == std::string::npos ? "." : path.substr(0, slash == 0 ? 1 : slash);
}

bool ends_with(std::string_view s, std::string_view suffix) {
  return s.size() >= suffix.size() && s.substr(s.size() - suffix.size()) == suffix;
}

// A shard name must stay inside the model directory: relative, no "..", no empty components.
bool safe_relative_name(const std::string& name) {
  if (name.empty() || name.front() == '/') return false;
  std::stringstream ss(name);
  std::string part;
  while (std::getline(ss, part, '/'))
    if (part.empty() || part == "." || part == "..") return false;
  return name.back() != '/';
}

}  // namespace

ShardedSafetensors ShardedSafetensors::open(const std::string& path) {
  ShardedSafetensors s;
  std::string target = path;
  if (is_dir(path)) {
    const std::string single = path + "/" + std::string(kSafetensorsSingleName);
    const std::string index = path + "/" + std::string(kSafetensorsIndexName);
    if (path_exists(single)) target = single;
    else if (path_exists(index)) target = index;
    else fail_config("{}: no {} or {} in this directory", path, kSafetensorsSingleName, kSafetensorsIndexName);
  }
  s.path_ = target;

  if (!ends_with(target, ".json")) {  // one file
    s.files_.push_back(SafetensorsFile::open(target));
    for (const auto& e : s.files_[0].entries()) s.file_of_.emplace(e.name, 0);
    return s;
  }

  s.index_path_ = target;
  std::ifstream in(target, std::ios::binary);
  if (!in) fail_config("cannot open safetensors index {}", target);
  std::stringstream buf;
  buf << in.rdbuf();
  s.index_text_ = buf.str();
  const nlohmann::json j = parse_json_strict(s.index_text_, target);
  if (!j.is_object()) fail_config("{}: index is a JSON {}, not an object", target, j.type_name());
  if (j.contains("metadata")) {
    const auto& m = j.at("metadata");
    if (!m.is_object()) fail_config("{}: \"metadata\" is a JSON {}, not an object", target, m.type_name());
    if (m.contains("total_size")) {
      const auto& t = m.at("total_size");
      if (t.is_number_unsigned() || (t.is_number_integer() && t.get<std::int64_t>() >= 0))
        s.declared_total_size_ = t.get<std::uint64_t>();
      else if (t.is_number_float() && t.get<double>() >= 0 && t.get<double>() == std::floor(t.get<double>()) &&
               t.get<double>() < 1.8e19)
        s.declared_total_size_ = static_cast<std::uint64_t>(t.get<double>());
      else
        fail_config("{}: metadata.total_size {} is not a non-negative integer", target, t.dump());
    }
  }
  if (!j.contains("weight_map")) fail_config("{}: no \"weight_map\"", target);
  const auto& wm = j.at("weight_map");
  if (!wm.is_object()) fail_config("{}: \"weight_map\" is a JSON {}, not an object", target, wm.type_name());

  // The files, in name order, each opened (and fully validated) once.
  std::map<std::string, std::string> first_tensor_of;  // file -> a tensor mapped to it (for messages)
  for (const auto& [name, file] : wm.items()) {
    if (!file.is_string())
      fail_config("{}: weight_map entry of tensor \"{}\" is a JSON {}, not a file name", target, name, file.type_name());
    const std::string& f = file.get_ref<const std::string&>();
    if (!safe_relative_name(f))
      fail_config("{}: tensor \"{}\" is mapped to \"{}\", which is not a file name inside the model directory",
                  target, name, f);
    first_tensor_of.try_emplace(f, name);
  }
  const std::string dir = dir_of(target);
  std::map<std::string, std::size_t> file_index;
  for (const auto& [f, tensor] : first_tensor_of) {
    const std::string p = dir + "/" + f;
    if (!path_exists(p))
      fail_config("{}: shard {} (holding tensor \"{}\" and maybe others) does not exist", target, p, tensor);
    file_index.emplace(f, s.files_.size());
    s.files_.push_back(SafetensorsFile::open(p));
  }

  // Every tensor of a file is found in exactly one file; every mapped tensor is where the map says.
  for (std::size_t i = 0; i < s.files_.size(); ++i)
    for (const auto& e : s.files_[i].entries()) {
      const auto [it, fresh] = s.file_of_.emplace(e.name, i);
      if (!fresh)
        fail_config("{}: tensor \"{}\" is in two shards, {} and {}", target, e.name, s.files_[it->second].path(),
                    s.files_[i].path());
    }
  for (const auto& [name, file] : wm.items()) {
    const std::size_t want = file_index.at(file.get<std::string>());
    if (!s.files_[want].contains(name)) {
      const auto it = s.file_of_.find(name);
      if (it == s.file_of_.end())
        fail_config("{}: tensor \"{}\" is mapped to {}, which does not hold it", target, name, s.files_[want].path());
      fail_config("{}: tensor \"{}\" is mapped to {} but is in {}", target, name, s.files_[want].path(),
                  s.files_[it->second].path());
    }
  }
  std::vector<std::string> unlisted;
  for (const auto& [name, i] : s.file_of_)
    if (!wm.contains(name)) unlisted.push_back(name);
  std::sort(unlisted.begin(), unlisted.end());
  for (const auto& name : unlisted)
    s.warnings_.push_back(fmt::format("{}: tensor \"{}\" of {} is not in the weight map", target, name,
                                      s.files_[s.file_of_.at(name)].path()));
  if (s.declared_total_size_ && *s.declared_total_size_ != s.total_size())
    s.warnings_.push_back(fmt::format("{}: metadata.total_size is {} but the shards hold {} bytes of tensor data",
                                      target, *s.declared_total_size_, s.total_size()));
  return s;
}

std::vector<std::string> ShardedSafetensors::names() const {
  std::vector<std::string> out;
  out.reserve(file_of_.size());
  for (const auto& [name, i] : file_of_) out.push_back(name);
  std::sort(out.begin(), out.end());
  return out;
}

const SafetensorsEntry* ShardedSafetensors::find(std::string_view name) const {
  const auto it = file_of_.find(std::string(name));
  return it == file_of_.end() ? nullptr : files_[it->second].find(name);
}

const SafetensorsEntry& ShardedSafetensors::entry(std::string_view name) const {
  const SafetensorsEntry* e = find(name);
  if (!e) fail_config("{}: no tensor \"{}\"", path_, name);
  return *e;
}

const SafetensorsFile& ShardedSafetensors::file_of(std::string_view name) const {
  const auto it = file_of_.find(std::string(name));
  if (it == file_of_.end()) fail_config("{}: no tensor \"{}\"", path_, name);
  return files_[it->second];
}

std::uint64_t ShardedSafetensors::total_size() const {
  std::uint64_t n = 0;
  for (const auto& f : files_) n += f.data_size();
  return n;
}

}  // namespace dg
