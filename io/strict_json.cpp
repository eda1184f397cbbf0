// Strict JSON parsing: a SAX handler that builds the same DOM as nlohmann's own parser while rejecting
// duplicate keys and deep nesting; see strict_json.h for the rules.
#include "io/strict_json.h"

#include <fmt/format.h>

#include <unordered_set>
#include <vector>

#include "layers/error.h"

namespace dg {

namespace {

using json = nlohmann::json;
constexpr std::size_t kMaxDepth = 128;

class StrictSax {
 public:
  explicit StrictSax(json& root) : root_(root) {}

  bool null() { return value(json(nullptr)); }
  bool boolean(bool b) { return value(json(b)); }
  bool number_integer(json::number_integer_t v) { return value(json(v)); }
  bool number_unsigned(json::number_unsigned_t v) { return value(json(v)); }
  bool number_float(json::number_float_t v, const json::string_t&) { return value(json(v)); }
  bool string(json::string_t& s) { return value(json(std::move(s))); }
  bool binary(json::binary_t& b) { return value(json(json::binary_t(std::move(b)))); }

  bool start_object(std::size_t) { return open(json::object()); }
  bool start_array(std::size_t) { return open(json::array()); }
  bool end_object() { return close(); }
  bool end_array() { return close(); }

  bool key(json::string_t& k) {
    Level& top = stack_.back();
    if (!top.keys.insert(k).second) {
      std::vector<std::string> path;
      for (std::size_t i = 1; i < stack_.size(); ++i) path.push_back(stack_[i].name);
      path.push_back(k);
      error = fmt::format("duplicate key \"{}\"", json_key_path(path));
      return false;
    }
    top.key = k;
    pending_ = &(*top.node)[k];
    return true;
  }

  bool parse_error(std::size_t, const std::string&, const json::exception& ex) {
    if (error.empty()) error = ex.what();
    return false;
  }

  std::string error;

 private:
  struct Level {
    json* node;
    std::unordered_set<std::string> keys;
    std::string key;   // the key being filled (objects)
    std::string name;  // this level's key or index in its parent, for messages
  };

  json* place(json&& v) {
    if (stack_.empty()) {
      root_ = std::move(v);
      return &root_;
    }
    json* top = stack_.back().node;
    if (top->is_array()) {
      top->push_back(std::move(v));
      return &top->back();
    }
    *pending_ = std::move(v);
    return pending_;
  }
  bool value(json&& v) {
    place(std::move(v));
    return true;
  }
  bool open(json&& v) {
    if (stack_.size() >= kMaxDepth) {
      error = fmt::format("nesting deeper than {} levels", kMaxDepth);
      return false;
    }
    std::string name;
    if (!stack_.empty())
      name = stack_.back().node->is_array() ? fmt::format("{}", stack_.back().node->size()) : stack_.back().key;
    json* node = place(std::move(v));
    stack_.push_back(Level{node, {}, {}, std::move(name)});
    return true;
  }
  bool close() {
    stack_.pop_back();
    return true;
  }

  json& root_;
  json* pending_ = nullptr;
  std::vector<Level> stack_;
};

}  // namespace

std::string json_key_path(const std::vector<std::string>& keys) {
  std::string out;
  for (const auto& k : keys) {
    if (!out.empty()) out += '/';
    out += k;
  }
  return out;
}

namespace {

std::string shown(const json& v) {  // the value as the user wrote it, cut short
  std::string s = v.dump();
  return s.size() > 80 ? s.substr(0, 77) + "..." : s;
}

}  // namespace

std::int64_t json_integer(const json& v, const std::string& file, const std::string& key, std::int64_t lo,
                          std::int64_t hi) {
  bool ok = false;
  std::int64_t x = 0;
  if (v.is_number_unsigned()) {  // nlohmann keeps non-negative integers unsigned (up to 2^64 - 1)
    const std::uint64_t u = v.get<std::uint64_t>();
    ok = hi >= 0 && u <= static_cast<std::uint64_t>(hi);
    x = ok ? static_cast<std::int64_t>(u) : 0;
    ok = ok && x >= lo;
  } else if (v.is_number_integer()) {
    x = v.get<std::int64_t>();
    ok = x >= lo && x <= hi;
  }
  if (!ok) fail_config("{}: '{}' must be an integer in [{}, {}], got {}", file, key, lo, hi, shown(v));
  return x;
}

double json_number(const json& v, const std::string& file, const std::string& key) {
  if (!v.is_number()) fail_config("{}: '{}' must be a number, got {}", file, key, shown(v));
  return v.get<double>();
}

bool json_boolean(const json& v, const std::string& file, const std::string& key) {
  if (!v.is_boolean()) fail_config("{}: '{}' must be a boolean, got {}", file, key, shown(v));
  return v.get<bool>();
}

std::string json_string(const json& v, const std::string& file, const std::string& key) {
  if (!v.is_string()) fail_config("{}: '{}' must be a string, got {}", file, key, shown(v));
  return v.get<std::string>();
}

JsonFields::JsonFields(const json& obj, std::string file_name, std::string key_path)
    : obj_(obj), file_(std::move(file_name)), path_(std::move(key_path)) {
  if (!obj_.is_object())
    fail_config("{}: {} must be a JSON object, got {}", file_, path_.empty() ? "the file" : "'" + path_ + "'",
                shown(obj_));
}

std::string JsonFields::key(std::string_view name) const {
  return path_.empty() ? std::string(name) : path_ + "." + std::string(name);
}

const json* JsonFields::find(std::string_view name) const {
  const auto it = obj_.find(std::string(name));
  return it == obj_.end() || it->is_null() ? nullptr : &*it;
}

const json& JsonFields::required(std::string_view name) const {
  const json* v = find(name);
  if (!v) fail_config("{}: missing required key '{}'", file_, key(name));
  return *v;
}

double JsonFields::number(std::string_view name, double fallback) const {
  const json* v = find(name);
  return v ? json_number(*v, file_, key(name)) : fallback;
}

bool JsonFields::boolean(std::string_view name, bool fallback) const {
  const json* v = find(name);
  return v ? json_boolean(*v, file_, key(name)) : fallback;
}

std::string JsonFields::string(std::string_view name, const std::string& fallback) const {
  const json* v = find(name);
  return v ? json_string(*v, file_, key(name)) : fallback;
}

JsonFields JsonFields::object(std::string_view name) const { return JsonFields(required(name), file_, key(name)); }

nlohmann::json parse_json_strict(std::string_view text, const std::string& what) {
  if (const auto nul = text.find('\0'); nul != std::string_view::npos)
    fail_config("{}: invalid JSON: NUL byte at offset {}", what, nul);
  json root;
  StrictSax sax(root);
  const bool ok = json::sax_parse(text.begin(), text.end(), &sax, nlohmann::json::input_format_t::json,
                                  /*strict=*/true, /*ignore_comments=*/false);
  if (!ok) fail_config("{}: invalid JSON: {}", what, sax.error.empty() ? "parse error" : sax.error);
  return root;
}

}  // namespace dg
