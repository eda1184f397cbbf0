// Checks a `dgemma generate` output file written for an OpenAI batch input file (tests/cli/test_generate_openai.sh).
//
//   check_openai_batch validate SCHEMA INPUT OUTPUT
//     every output line against SCHEMA (tests/fixtures/openai/batch_output.schema.json, the pinned openai
//     package's types), then the values against the input: one line per non-blank input line with its
//     custom_id (null where the input line has no string one), a result xor an error, error.line the input
//     line, usage.total_tokens = prompt + completion, completion_tokens within the request's max_tokens /
//     max_completion_tokens, no stop string in the text, ids unique; requests with a seed whose bodies
//     differ at most in "stop" give the same text, cut before the first stop string where they have one.
//     Prints one digest line per output line (LINE custom_id=ID ok finish=F prompt=P completion=C, or
//     LINE custom_id=ID error code=C param=P) and exits 1 on any violation.
//   check_openai_batch stop-probe OUTPUT CUSTOM_ID
//     a JSON string of two characters from the middle of that result's text (a stop string that occurs).
//
// The schema subset understood: type, required, properties, additionalProperties, items, enum, const,
// anyOf, $ref (#/...), and the annotations title, description, default, $comment; any other keyword is an
// error, so that nothing is silently left unchecked.
#include <fmt/format.h>
#include <fmt/ranges.h>

#include <algorithm>
#include <fstream>
#include <iostream>
#include <map>
#include <nlohmann/json.hpp>
#include <optional>
#include <set>
#include <string>
#include <vector>

namespace {

using nlohmann::json;

std::vector<std::string> violations;
void violation(const std::string& s) { violations.push_back(s); }

// ---- the schema subset ---------------------------------------------------------------------------

bool has_type(const json& v, const std::string& t) {
  if (t == "object") return v.is_object();
  if (t == "array") return v.is_array();
  if (t == "string") return v.is_string();
  if (t == "boolean") return v.is_boolean();
  if (t == "null") return v.is_null();
  if (t == "number") return v.is_number();
  if (t == "integer") return v.is_number_integer();
  throw std::runtime_error("unknown schema type " + t);
}

struct Validator {
  const json& root;

  const json& resolve(const std::string& ref) const {
    if (ref.rfind("#/", 0) != 0) throw std::runtime_error("unsupported $ref " + ref);
    return root.at(json::json_pointer(ref.substr(1)));
  }

  // Errors of `v` against `s`, each prefixed with `at` (a JSON pointer to the value).
  void check(const json& v, const json& s, const std::string& at, std::vector<std::string>& errs) const {
    static const std::set<std::string> known = {"type", "required", "properties", "additionalProperties", "items",
                                                "enum", "const", "anyOf", "$ref", "title", "description",
                                                "default", "$comment", "$defs"};
    for (const auto& [k, x] : s.items())
      if (!known.count(k)) throw std::runtime_error("unsupported schema keyword " + k + " at " + at);
    if (s.contains("$ref")) check(v, resolve(s["$ref"]), at, errs);
    if (s.contains("type")) {
      const json types = s["type"].is_array() ? s["type"] : json::array({s["type"]});
      bool ok = false;
      for (const json& t : types) ok = ok || has_type(v, t.get<std::string>());
      if (!ok) return errs.push_back(fmt::format("{}: {} is not of type {}", at, v.dump(), types.dump()));
    }
    if (s.contains("enum") && std::find(s["enum"].begin(), s["enum"].end(), v) == s["enum"].end())
      errs.push_back(fmt::format("{}: {} is not one of {}", at, v.dump(), s["enum"].dump()));
    if (s.contains("const") && v != s["const"])
      errs.push_back(fmt::format("{}: {} is not {}", at, v.dump(), s["const"].dump()));
    if (s.contains("anyOf")) any_of(v, s["anyOf"], at, errs);
    if (v.is_object()) object(v, s, at, errs);
    if (v.is_array() && s.contains("items"))
      for (std::size_t i = 0; i < v.size(); ++i) check(v[i], s["items"], fmt::format("{}/{}", at, i), errs);
  }

  void any_of(const json& v, const json& options, const std::string& at, std::vector<std::string>& errs) const {
    std::vector<std::string> why;
    for (const json& o : options) {
      std::vector<std::string> e;
      check(v, o, at, e);
      if (e.empty()) return;
      why.push_back(e.front());
    }
    errs.push_back(fmt::format("{}: matches none of anyOf ({})", at, fmt::join(why, "; ")));
  }

  void object(const json& v, const json& s, const std::string& at, std::vector<std::string>& errs) const {
    if (s.contains("required"))
      for (const json& k : s["required"])
        if (!v.contains(k.get<std::string>()))
          errs.push_back(fmt::format("{}: missing required '{}'", at, k.get<std::string>()));
    for (const auto& [k, x] : v.items()) {
      const std::string here = at + "/" + k;
      if (s.contains("properties") && s["properties"].contains(k)) check(x, s["properties"][k], here, errs);
      else if (s.contains("additionalProperties") && s["additionalProperties"].is_object())
        check(x, s["additionalProperties"], here, errs);
      else if (s.contains("additionalProperties") && s["additionalProperties"] == false)
        errs.push_back(fmt::format("{}: no additional properties allowed", here));
    }
  }
};

// ---- the values ------------------------------------------------------------------------------------

std::vector<std::string> read_lines(const std::string& path, bool skip_blank) {
  std::ifstream in(path);
  if (!in) throw std::runtime_error("cannot read " + path);
  std::vector<std::string> out;
  for (std::string l; std::getline(in, l);)
    if (!skip_blank || l.find_first_not_of(" \t\r") != std::string::npos) out.push_back(l);
  return out;
}

// The input lines: (line number, parsed object or null).
std::vector<std::pair<int, json>> read_input(const std::string& path) {
  std::ifstream in(path);
  std::vector<std::pair<int, json>> out;
  int n = 0;
  for (std::string l; std::getline(in, l);) {
    ++n;
    if (l.find_first_not_of(" \t\r") == std::string::npos) continue;
    json j = json::parse(l, nullptr, /*allow_exceptions=*/false);
    out.emplace_back(n, j.is_discarded() || !j.is_object() ? json() : j);
  }
  return out;
}

std::size_t first_stop(const std::string& text, const json& stop) {
  std::size_t at = std::string::npos;
  for (const json& s : stop.is_string() ? json::array({stop}) : stop) at = std::min(at, text.find(s.get<std::string>()));
  return at;
}

const json& body_of(const json& in) {
  static const json none = json::object();
  return in.is_object() && in.contains("body") && in["body"].is_object() ? in["body"] : none;
}

// (The checks read copies: a missing key reads as null.)
void check_result(const std::string& where, const json& in, json out) {
  json& r = out["response"];
  json& b = r["body"];
  if (r["status_code"] != 200) violation(where + ": status_code is not 200");
  if (b["choices"].size() != 1 || b["choices"][0]["index"] != 0) violation(where + ": not one choice of index 0");
  json& u = b["usage"];
  if (!u.is_object() || u["total_tokens"] != u["prompt_tokens"].get<long>() + u["completion_tokens"].get<long>())
    violation(where + ": usage.total_tokens is not prompt_tokens + completion_tokens");
  const json& body = body_of(in);
  for (const char* k : {"max_tokens", "max_completion_tokens"})
    if (body.contains(k) && body[k].is_number_integer() && u["completion_tokens"] > body[k])
      violation(fmt::format("{}: {} completion tokens, more than {} {}", where, u["completion_tokens"].dump(), k,
                            body[k].dump()));
  const std::string text = b["choices"][0]["message"]["content"].get<std::string>();
  if (body.contains("stop") && !body["stop"].is_null() && first_stop(text, body["stop"]) != std::string::npos)
    violation(where + ": the text holds a stop string");
  json& m = out["dgemma"];
  if (!m.is_object() || !m["canvases"].is_number_integer() || !(m["generated_tokens"] >= u["completion_tokens"]))
    violation(where + ": no dgemma metrics, or fewer generated tokens than completion tokens");
}

void check_error(const std::string& where, int line, json out) {
  if (!out["response"].is_null()) violation(where + ": an error with a response");
  json& e = out["error"];
  if (!e["code"].is_string() || e["code"].get<std::string>().empty() || !e["message"].is_string())
    violation(where + ": an error without code or message");
  if (e["line"] != line)
    violation(fmt::format("{}: error.line {} is not the input line {}", where, e["line"].dump(), line));
}

// Requests with a seed whose bodies differ at most in "stop": the text of the one without stop, cut.
void check_seeded(const std::vector<std::pair<int, json>>& input, std::vector<json> outputs) {
  std::map<std::string, std::vector<std::size_t>> groups;
  for (std::size_t i = 0; i < input.size(); ++i) {
    json body = body_of(input[i].second);
    if (!body.contains("seed") || !outputs[i]["error"].is_null()) continue;
    body.erase("stop");
    groups[body.dump()].push_back(i);
  }
  auto choice = [&](std::size_t i) -> json& { return outputs[i]["response"]["body"]["choices"][0]; };
  for (const auto& [key, members] : groups) {
    std::optional<std::size_t> ref;
    for (std::size_t i : members)
      if (!body_of(input[i].second).contains("stop")) ref = i;
    if (!ref) continue;
    const std::string text = choice(*ref)["message"]["content"];
    for (std::size_t i : members) {
      const json stop = body_of(input[i].second).value("stop", json::array());
      const std::size_t cut = first_stop(text, stop);
      const std::string want = cut == std::string::npos ? text : text.substr(0, cut);
      const json want_finish = cut == std::string::npos ? choice(*ref)["finish_reason"] : json("stop");
      if (choice(i)["message"]["content"] != want || choice(i)["finish_reason"] != want_finish)
        violation(fmt::format("line {}: seeded like line {}: the text or finish_reason differs from that line's "
                              "(cut at its stop strings)", input[i].first, input[*ref].first));
    }
  }
}

std::string digest(int line, json out) {
  const std::string id = out["custom_id"].is_string() ? out["custom_id"].get<std::string>() : "null";
  if (!out["error"].is_null())
    return fmt::format("{} custom_id={} error code={} param={}", line, id, out["error"]["code"].get<std::string>(),
                       out["error"]["param"].is_string() ? out["error"]["param"].get<std::string>() : "null");
  const json& b = out["response"]["body"];
  return fmt::format("{} custom_id={} ok finish={} prompt={} completion={} model={} created={}", line, id,
                     b["choices"][0]["finish_reason"].get<std::string>(), b["usage"]["prompt_tokens"].dump(),
                     b["usage"]["completion_tokens"].dump(), b["model"].get<std::string>(), b["created"].dump());
}

int validate(const std::string& schema_path, const std::string& input_path, const std::string& output_path) {
  std::ifstream sf(schema_path);
  const json schema = json::parse(sf);
  const Validator v{schema};
  const auto input = read_input(input_path);
  const auto lines = read_lines(output_path, false);
  if (lines.size() != input.size())
    violation(fmt::format("{} output lines for {} input lines", lines.size(), input.size()));
  std::vector<json> outputs;
  std::set<std::string> ids;
  for (std::size_t i = 0; i < lines.size() && i < input.size(); ++i) {
    const auto& [line, in] = input[i];
    const std::string where = fmt::format("output line {} (input line {})", i + 1, line);
    json out = json::parse(lines[i]);
    std::vector<std::string> errs;
    v.check(out, schema, "", errs);
    for (const std::string& e : errs) violation(where + ": schema: " + e);
    outputs.push_back(out);
    if (!errs.empty()) continue;
    const bool has_id = in.is_object() && in.contains("custom_id") && in["custom_id"].is_string();
    const json want_id = has_id ? in["custom_id"] : json();
    if (out["custom_id"] != want_id)
      violation(fmt::format("{}: custom_id {} for {}", where, out["custom_id"].dump(), want_id.dump()));
    if (out["error"].is_null() == out["response"].is_null()) violation(where + ": not exactly one of response and error");
    else if (out["error"].is_null()) check_result(where, in, out);
    else check_error(where, line, out);
    std::vector<std::string> own = {out["id"].get<std::string>()};
    if (out["error"].is_null()) {
      own.push_back(out["response"]["request_id"].get<std::string>());
      own.push_back(out["response"]["body"]["id"].get<std::string>());
    }
    for (const std::string& id : own)
      if (!ids.insert(id).second) violation(fmt::format("{}: id {} used twice", where, id));
    std::cout << digest(line, out) << "\n";
  }
  if (violations.empty() && outputs.size() == input.size()) check_seeded(input, outputs);
  for (const std::string& s : violations) std::cerr << "check_openai_batch: " << s << "\n";
  if (violations.empty()) std::cout << "check_openai_batch: " << lines.size() << " lines valid\n";
  return violations.empty() ? 0 : 1;
}

// Two characters (UTF-8 code points, not U+FFFD) from the middle of a result's text, as a JSON string.
int stop_probe(const std::string& output_path, const std::string& custom_id) {
  for (const std::string& l : read_lines(output_path, true)) {
    json out = json::parse(l);
    if (out["custom_id"] != custom_id) continue;
    const std::string text = out["response"]["body"]["choices"][0]["message"]["content"];
    std::vector<std::string> chars;
    for (std::size_t i = 0; i < text.size();) {
      std::size_t n = 1;
      while (i + n < text.size() && (static_cast<unsigned char>(text[i + n]) & 0xC0) == 0x80) ++n;
      chars.push_back(text.substr(i, n));
      i += n;
    }
    for (std::size_t i = chars.size() / 2; i + 1 < chars.size(); ++i)
      if (chars[i] != "\xEF\xBF\xBD" && chars[i + 1] != "\xEF\xBF\xBD") {
        std::cout << json(chars[i] + chars[i + 1]).dump() << "\n";
        return 0;
      }
    std::cerr << "check_openai_batch: no two characters to probe in the text of " << custom_id << "\n";
    return 1;
  }
  std::cerr << "check_openai_batch: no result " << custom_id << "\n";
  return 1;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    const std::vector<std::string> a(argv + 1, argv + argc);
    if (a.size() == 4 && a[0] == "validate") return validate(a[1], a[2], a[3]);
    if (a.size() == 3 && a[0] == "stop-probe") return stop_probe(a[1], a[2]);
    std::cerr << "usage: check_openai_batch validate SCHEMA INPUT OUTPUT | stop-probe OUTPUT CUSTOM_ID\n";
    return 2;
  } catch (const std::exception& e) {
    std::cerr << "check_openai_batch: " << e.what() << "\n";
    return 1;
  }
}
