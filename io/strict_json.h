// Strict JSON parsing for files dgemma reads from users: nlohmann-json's grammar (RFC 8259, no comments)
// plus what nlohmann lets through silently and serde_json (the safetensors reference) does not:
//  - a key repeated inside one object is an error (nlohmann would keep the last value);
//  - a NUL byte anywhere is an error (nlohmann's lexer would take it for the end of the input);
//  - nesting deeper than 128 arrays/objects is an error (serde_json's recursion limit).
// Errors are dg::ConfigError naming `what` (usually the file) and, for duplicates, the key path.
#pragma once
#include <cstdint>
#include <limits>
#include <nlohmann/json.hpp>
#include <string>
#include <string_view>
#include <vector>

namespace dg {

nlohmann::json parse_json_strict(std::string_view text, const std::string& what);

// A JSON pointer-like path for messages: "weight_map/model.norm.weight".
std::string json_key_path(const std::vector<std::string>& keys);

// Typed reads of single values for files users write (config.json, generation_config.json, ...). `key` is
// the value's dotted path from the file's top level ("text_config.rope_parameters.full_attention.rope_theta");
// a wrong type or an out-of-range value is a ConfigError "<file>: '<key>' must be <expectation>, got <value>".
// An integer must be a JSON integer (1e3 and 1000.0 are floats) inside [lo, hi]: nothing is narrowed.
std::int64_t json_integer(const nlohmann::json& v, const std::string& file, const std::string& key, std::int64_t lo,
                          std::int64_t hi);
template <class T>
T json_integer_as(const nlohmann::json& v, const std::string& file, const std::string& key,
                  T lo = std::numeric_limits<T>::min(), T hi = std::numeric_limits<T>::max()) {
  static_assert(std::is_integral_v<T> && sizeof(T) <= sizeof(std::int64_t) &&
                (std::is_signed_v<T> || sizeof(T) < sizeof(std::int64_t)));
  return static_cast<T>(json_integer(v, file, key, lo, hi));
}
double json_number(const nlohmann::json& v, const std::string& file, const std::string& key);  // int or float
bool json_boolean(const nlohmann::json& v, const std::string& file, const std::string& key);
std::string json_string(const nlohmann::json& v, const std::string& file, const std::string& key);

// The keys of one JSON object read through the functions above; absent and null keys are "not set" and
// give the fallback. The object itself must be a JSON object (ConfigError naming `path` otherwise).
class JsonFields {
 public:
  JsonFields(const nlohmann::json& obj, std::string file_name, std::string key_path = {});
  const nlohmann::json& value() const { return obj_; }
  const std::string& file() const { return file_; }
  std::string key(std::string_view name) const;  // the dotted path of a key of this object
  const nlohmann::json* find(std::string_view name) const;  // nullptr when absent or null
  bool has(std::string_view name) const { return find(name) != nullptr; }

  template <class T>
  T integer(std::string_view name, T fallback, T lo = std::numeric_limits<T>::min(),
            T hi = std::numeric_limits<T>::max()) const {
    const nlohmann::json* v = find(name);
    return v ? json_integer_as<T>(*v, file_, key(name), lo, hi) : fallback;
  }
  template <class T>
  T required_integer(std::string_view name, T lo = std::numeric_limits<T>::min(),
                     T hi = std::numeric_limits<T>::max()) const {
    return json_integer_as<T>(required(name), file_, key(name), lo, hi);
  }
  double number(std::string_view name, double fallback) const;
  bool boolean(std::string_view name, bool fallback) const;
  std::string string(std::string_view name, const std::string& fallback) const;
  const nlohmann::json& required(std::string_view name) const;  // ConfigError "missing required key"
  // A nested object's fields; ConfigError unless the value is an object.
  JsonFields object(std::string_view name) const;

 private:
  const nlohmann::json& obj_;
  std::string file_, path_;
};

}  // namespace dg
