#include "jobs/generate_requests.h"

#include <fstream>
#include <map>
#include <string_view>

#include "io/strict_json.h"
#include "jobs/log.h"
#include "layers/error.h"

namespace dg {

using nlohmann::json;

std::string trim(const std::string& s) {
  const auto b = s.find_first_not_of(" \t\r\n");
  if (b == std::string::npos) return {};
  return s.substr(b, s.find_last_not_of(" \t\r\n") - b + 1);
}

std::string id_text(const json& id) { return id.is_string() ? id.get<std::string>() : id.dump(); }

std::string dump_line(const json& j) { return j.dump(-1, ' ', false, json::error_handler_t::replace); }

std::string valid_utf8(const std::string& s) { return json::parse(dump_line(json(s))).get<std::string>(); }

namespace {

// Most tokens one request may ask for (max_tokens and friends).
constexpr std::int64_t kMaxRequestTokens = std::int64_t{1} << 20;

// A value as messages show it, cut at 40 characters.
std::string shown(const json& v) {
  std::string s = dump_line(v);
  return s.size() > 40 ? s.substr(0, 37) + "..." : s;
}
const char* kind_of(const json& v) {
  return v.is_string() ? "a string" : v.is_number_float() ? "a float" : v.is_number() ? "an integer"
         : v.is_boolean() ? "a boolean"
         : v.is_array() ? "an array" : v.is_object() ? "an object" : v.type_name();
}
[[noreturn]] void wrong_type(const json& v, const std::string& key, const char* want) {
  throw RequestError(fmt::format("'{}' must be {}, got {}: {}", key, want, kind_of(v), shown(v)), "invalid_type", key);
}

// The value of a key, nullptr when absent or null ("not set").
const json* field(const json& obj, std::string_view key) {
  const auto it = obj.find(key);
  return it == obj.end() || it->is_null() ? nullptr : &*it;
}

// A token count: a JSON integer in [1, kMaxRequestTokens], never narrowed (4294967304 is not 8) nor
// converted ("12", 12.0 and true are type errors).
int request_tokens(const json& v, const std::string& key) {
  if (!v.is_number_integer()) wrong_type(v, key, "an integer");
  const bool in_range = v.is_number_unsigned()
                            ? v.get<std::uint64_t>() >= 1 && v.get<std::uint64_t>() <= std::uint64_t{kMaxRequestTokens}
                            : v.get<std::int64_t>() >= 1 && v.get<std::int64_t>() <= kMaxRequestTokens;
  if (!in_range)
    throw RequestError(fmt::format("'{}' must be an integer in [1, {}], got {}", key, kMaxRequestTokens, shown(v)),
                       "invalid_value", key);
  return static_cast<int>(v.get<std::int64_t>());
}

double request_temperature(const json& v, const std::string& key) {
  if (!v.is_number()) wrong_type(v, key, "a number");
  const double t = v.get<double>();
  if (t == 0)
    throw RequestError(fmt::format("'{}' 0 (greedy decoding) is not supported: the block-diffusion sampler samples "
                                   "every step at a temperature of its schedule, which 'temperature' multiplies; "
                                   "give a value in (0, 2]",
                                   key),
                       "unsupported_value", key);
  if (!(t > 0 && t <= 2))
    throw RequestError(fmt::format("'{}' must be a number in (0, 2], got {}", key, shown(v)), "invalid_value", key);
  return t;
}

std::uint64_t request_seed(const json& v, const std::string& key) {
  if (!v.is_number_integer()) wrong_type(v, key, "an integer");
  return v.is_number_unsigned() ? v.get<std::uint64_t>() : static_cast<std::uint64_t>(v.get<std::int64_t>());
}

std::vector<std::string> request_stop(const json& v, const std::string& key) {
  const char* want = "a string or an array of 1 to 4 strings";
  if (!v.is_string() && !v.is_array()) wrong_type(v, key, want);
  const json list = v.is_string() ? json::array({v}) : v;
  if (list.empty() || list.size() > 4)
    throw RequestError(fmt::format("'{}' must be {}, got {} strings", key, want, list.size()), "invalid_value", key);
  std::vector<std::string> out;
  for (const json& s : list) {
    if (!s.is_string()) wrong_type(s, key, want);
    if (s.get<std::string>().empty())
      throw RequestError(fmt::format("'{}' must not hold an empty string", key), "invalid_value", key);
    out.push_back(s.get<std::string>());
  }
  return out;
}

// A request line through the strict parser (a key given twice, a NUL byte or invalid UTF-8 is an error);
// the message without the parser's "<what>: " prefix (the caller names the file and line).
json parse_request_line(const std::string& text) {
  static const std::string what = "request";
  try {
    return parse_json_strict(text, what);
  } catch (const ConfigError& e) {
    std::string m = e.what();
    if (m.rfind(what + ": ", 0) == 0) m.erase(0, what.size() + 2);
    throw RequestError(m, "invalid_json_line");
  }
}

std::vector<ChatMessage> parse_messages(const json& m, const std::string& key) {
  if (!m.is_array() || m.empty()) throw RequestError("'messages' must be a non-empty array", "invalid_value", key);
  std::vector<ChatMessage> out;
  for (const json& x : m) {
    if (!x.is_object() || !x.contains("role") || !x["role"].is_string())
      throw RequestError("every message needs a string 'role'", "invalid_value", key);
    if (!x.contains("content") || !x["content"].is_string())
      throw RequestError("every message needs a string 'content' (text only)", "unsupported_value", key);
    out.push_back({x["role"].get<std::string>(), x["content"].get<std::string>()});
  }
  return out;
}

// How the OpenAI form's body fields are taken: used (read below; max_new_tokens and reference are dgemma's),
// ignored (they change nothing here: which model, who asks, what is stored), or accepted with their default
// value only (the JSON given).
struct BodyField {
  std::string_view name;
  const char* only;  // nullptr: used or ignored; else the one value accepted
};
constexpr BodyField kBodyFields[] = {
    {"messages", nullptr}, {"max_tokens", nullptr}, {"max_completion_tokens", nullptr}, {"max_new_tokens", nullptr},
    {"temperature", nullptr}, {"seed", nullptr}, {"stop", nullptr}, {"reference", nullptr}, {"model", nullptr},
    {"user", nullptr}, {"metadata", nullptr}, {"store", nullptr}, {"service_tier", nullptr},
    {"safety_identifier", nullptr}, {"prompt_cache_key", nullptr}, {"parallel_tool_calls", nullptr},
    {"n", "1"}, {"top_p", "1"}, {"presence_penalty", "0"}, {"frequency_penalty", "0"}, {"logprobs", "false"},
    {"stream", "false"}, {"response_format", R"({"type":"text"})"}, {"modalities", R"(["text"])"}};

// The OpenAI form's envelope and the body's fields other than the sampling ones.
void check_openai_line(const json& j, const json& body) {
  for (const auto& [k, v] : j.items())
    if (k != "custom_id" && k != "method" && k != "url" && k != "body" && k != "reference")
      throw RequestError(fmt::format("unknown field '{}' (an OpenAI batch line has custom_id, method, url and body)", k),
                         "unsupported_parameter", k);
  if (const json* m = field(j, "method"); m && *m != "POST")
    throw RequestError(fmt::format("'method' must be \"POST\", got {}", shown(*m)), "unsupported_value", "method");
  if (const json* u = field(j, "url"); u && *u != "/v1/chat/completions")
    throw RequestError(fmt::format("'url' {} is not supported: dgemma generate answers \"/v1/chat/completions\" only",
                                   shown(*u)),
                       "unsupported_value", "url");
  if (const json* model = field(body, "model"); model && !model->is_string()) wrong_type(*model, "body.model", "a string");
  for (const auto& [k, v] : body.items()) {
    const BodyField* f = nullptr;
    for (const BodyField& b : kBodyFields) f = b.name == k ? &b : f;
    const std::string key = "body." + k;
    if (!f)
      throw RequestError(fmt::format("'{}' is not supported by dgemma generate", key), "unsupported_parameter", key);
    if (f->only && !v.is_null() && v != json::parse(f->only))
      throw RequestError(fmt::format("'{}' {} is not supported: only {} (or null)", key, shown(v), f->only),
                         "unsupported_value", key);
  }
}

// The sampling fields of a request (the body of the OpenAI form, the line itself in the plain form).
void parse_sampling(const json& body, const std::string& prefix, Request& r) {
  for (const char* k : {"max_tokens", "max_completion_tokens", "max_new_tokens"})
    if (const json* v = field(body, k)) r.max_new_tokens = request_tokens(*v, prefix + k);
  if (const json* v = field(body, "temperature")) r.temperature = request_temperature(*v, prefix + "temperature");
  if (const json* v = field(body, "seed")) r.seed = request_seed(*v, prefix + "seed");
  if (const json* v = field(body, "stop")) r.stop = request_stop(*v, prefix + "stop");
}

// One request line into r (r.id set as soon as it is known, so that an error record carries it); throws
// RequestError. `form_known`: the line is an object with "custom_id" or "id".
void parse_request(const json& j, Request& r, std::map<std::string, std::int64_t>& seen, bool& form_known) {
  if (!j.is_object()) throw RequestError("a line must be a JSON object", "invalid_json_line");
  r.openai = j.contains("custom_id");
  form_known = r.openai || j.contains("id");
  if (!form_known) throw RequestError("no 'id' (or 'custom_id')", "missing_required_parameter");
  const json& id = r.openai ? j["custom_id"] : j["id"];
  if (r.openai && !id.is_string()) wrong_type(id, "custom_id", "a string");
  if (!id.is_string() && !id.is_number_integer())
    throw RequestError("the id must be a string or an integer", "invalid_type", "id");
  r.id = id;
  const json* body = &j;
  const std::string prefix = r.openai ? "body." : "";
  if (r.openai) {
    if (!j.contains("body") || !j["body"].is_object())
      throw RequestError("OpenAI batch line without 'body'", "missing_required_parameter", "body");
    body = &j["body"];
  }
  if (auto it = seen.find(id_text(r.id)); it != seen.end())
    throw RequestError(fmt::format("duplicate {} {} (first on line {})", r.openai ? "custom_id" : "id", id_text(r.id),
                                   it->second),
                       "duplicate_custom_id", r.openai ? "custom_id" : "id");
  seen.emplace(id_text(r.id), r.line);
  if (r.openai) check_openai_line(j, *body);
  if (body->contains("messages")) r.messages = parse_messages((*body)["messages"], prefix + "messages");
  else if (body->contains("prompt") && (*body)["prompt"].is_string())
    r.messages = {{"user", (*body)["prompt"].get<std::string>()}};
  else throw RequestError("needs 'messages' or a string 'prompt'", "missing_required_parameter", prefix + "messages");
  for (const json* src : {&j, body})
    if (src->contains("reference")) {
      if (!(*src)["reference"].is_string()) wrong_type((*src)["reference"], "reference", "a string");
      r.reference = (*src)["reference"].get<std::string>();
    }
  parse_sampling(*body, prefix, r);
}

std::uint64_t fnv1a(std::string_view s) {
  std::uint64_t h = 0xcbf29ce484222325ull;
  for (const char c : s) h = (h ^ static_cast<unsigned char>(c)) * 0x100000001b3ull;
  return h;
}

}  // namespace

std::vector<Request> read_requests(const std::string& path, bool fail_on_error) {
  std::ifstream in(path);
  if (!in) fail_config("cannot read prompt file {}", path);
  std::vector<Request> out;
  std::vector<bool> known;  // the line's form is known
  std::map<std::string, std::int64_t> seen;
  std::string text;
  for (std::int64_t line = 1; std::getline(in, text); ++line) {
    if (text.find_first_not_of(" \t\r") == std::string::npos) continue;
    Request r;
    r.line = line;
    r.index = static_cast<std::int64_t>(out.size());
    r.line_hash = fnv1a(text);
    bool form_known = false;
    try {
      parse_request(parse_request_line(text), r, seen, form_known);
    } catch (const RequestError& e) {
      r.error = valid_utf8(e.what());
      r.error_code = e.code;
      r.error_param = e.param;
      r.messages.clear();
      if (fail_on_error) fail_config("{}:{}: {}", path, line, r.error);
      log::warn("{}:{}: {} (skipped)", path, line, r.error);
    }
    known.push_back(form_known);
    out.push_back(std::move(r));
  }
  bool any = false, all_openai = true;  // the form of the lines that have one
  for (std::size_t i = 0; i < out.size(); ++i)
    if (known[i]) any = true, all_openai = all_openai && out[i].openai;
  for (std::size_t i = 0; i < out.size(); ++i)
    if (!known[i]) out[i].openai = any && all_openai;
  return out;
}

}  // namespace dg
