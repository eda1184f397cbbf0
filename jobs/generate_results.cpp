#include "jobs/generate_results.h"

#include <fmt/format.h>

#include <algorithm>
#include <span>

namespace dg {

using nlohmann::json;

namespace {

bool is_eos(const GenerationConfig& g, std::int32_t id) {
  return std::find(g.eos_token_ids.begin(), g.eos_token_ids.end(), id) != g.eos_token_ids.end();
}

// The generation's count of a token list: tokens that are not pad.
std::int64_t counted(std::span<const std::int32_t> ids, const GenerationConfig& g) {
  return std::count_if(ids.begin(), ids.end(), [&](std::int32_t t) { return t != g.pad_token_id; });
}

// Where the first stop string starts in `text` (npos: none).
std::size_t first_stop(const std::string& text, const std::vector<std::string>& stop) {
  std::size_t at = std::string::npos;
  for (const std::string& s : stop) at = std::min(at, text.find(s));
  return at;
}

// The fewest leading tokens whose text holds a stop string (the text of all of `ids` does): a binary search,
// a longer prefix decoding to a longer text.
std::size_t tokens_through_stop(std::span<const std::int32_t> ids, const std::vector<std::string>& stop,
                                const Tokenizer& tok) {
  std::size_t lo = 1, hi = ids.size();
  while (lo < hi) {
    const std::size_t mid = lo + (hi - lo) / 2;
    if (first_stop(tok.decode(ids.first(mid), /*skip_special=*/true), stop) != std::string::npos) hi = mid;
    else lo = mid + 1;
  }
  return hi;
}

// "batch_req_", "req_", "chatcmpl-" + 16 hex digits made from the request's line (bytes and number).
std::string record_id(const Request& r, std::string_view prefix) {
  std::uint64_t h = 0xcbf29ce484222325ull;
  for (const char c : fmt::format("{}:{:016x}:{}", prefix, r.line_hash, r.line))
    h = (h ^ static_cast<unsigned char>(c)) * 0x100000001b3ull;
  return fmt::format("{}{:016x}", prefix, h);
}

// dgemma's own numbers of a result: the metrics of the generation, and the reference and its match.
json metrics(const Request& r, const Completion& c, const GenerationResult& res, bool token_ids) {
  json m = {{"canvases", res.canvases},
            {"denoising_steps", res.denoising_steps},
            {"tokens_per_forward", res.tokens_per_forward},
            {"generated_tokens", res.completion_tokens}};
  if (token_ids) m["token_ids"] = res.tokens;
  if (r.reference) {
    m["reference"] = *r.reference;
    m["exact_match"] = trim(c.text) == trim(*r.reference);
  }
  return m;
}

json plain_record(const Request& r, const Completion& c, const GenerationResult& res, bool token_ids) {
  json rec = {{"id", r.id},
              {"text", c.text},
              {"finish_reason", c.finish_reason},
              {"prompt_tokens", c.prompt_tokens},
              {"completion_tokens", c.completion_tokens},
              {"canvases", res.canvases},
              {"denoising_steps", res.denoising_steps},
              {"tokens_per_forward", res.tokens_per_forward}};
  if (token_ids) rec["token_ids"] = res.tokens;
  if (r.reference) {
    rec["reference"] = *r.reference;
    rec["exact_match"] = trim(c.text) == trim(*r.reference);
  }
  return rec;
}

json chat_completion(const Request& r, const Completion& c, const CompletionMeta& meta) {
  const json choice = {{"index", 0},
                       {"message", {{"role", "assistant"}, {"content", c.text}, {"refusal", nullptr}}},
                       {"finish_reason", c.finish_reason},
                       {"logprobs", nullptr}};
  return {{"id", record_id(r, "chatcmpl-")},
          {"object", "chat.completion"},
          {"created", meta.created},
          {"model", meta.model},
          {"choices", json::array({choice})},
          {"usage",
           {{"prompt_tokens", c.prompt_tokens},
            {"completion_tokens", c.completion_tokens},
            {"total_tokens", c.prompt_tokens + c.completion_tokens}}},
          {"system_fingerprint", "dgemma-" DGEMMA_VERSION}};
}

}  // namespace

Completion make_completion(const Request& r, const GenerationResult& res, std::int64_t prompt_tokens,
                           const Tokenizer& tok, const GenerationConfig& g) {
  Completion c{{}, res.finish_reason, prompt_tokens, res.completion_tokens};
  std::span<const std::int32_t> ids(res.tokens);
  if (r.openai && r.max_new_tokens > 0 && ids.size() > static_cast<std::size_t>(r.max_new_tokens)) {
    ids = ids.first(static_cast<std::size_t>(r.max_new_tokens));  // (an EOS among them would have ended ids)
    c.finish_reason = "length";
    c.completion_tokens = counted(ids, g);
  }
  if (!ids.empty() && is_eos(g, ids.back())) ids = ids.first(ids.size() - 1);  // counted, not printed
  c.text = tok.decode(ids, /*skip_special=*/true);
  if (const std::size_t at = first_stop(c.text, r.stop); at != std::string::npos) {
    c.text.resize(at);
    c.finish_reason = "stop";
    c.completion_tokens = counted(ids.first(tokens_through_stop(ids, r.stop, tok)), g);
  }
  return c;
}

json result_record(const Request& r, const Completion& c, const GenerationResult& res, const CompletionMeta& meta) {
  json rec;
  if (!r.openai) {
    rec = plain_record(r, c, res, meta.token_ids);
  } else {
    rec = {{"id", record_id(r, "batch_req_")},
           {"custom_id", r.id},
           {"response",
            {{"status_code", 200}, {"request_id", record_id(r, "req_")}, {"body", chat_completion(r, c, meta)}}},
           {"error", nullptr},
           {"dgemma", metrics(r, c, res, meta.token_ids)}};
  }
  rec["_index"] = r.index;
  return rec;
}

json error_record(const Request& r, const std::string& message, const std::string& code, const std::string& param) {
  json rec;
  if (!r.openai) {
    rec = {{"id", r.id}, {"error", {{"line", r.line}, {"message", message}}}};
  } else {
    rec = {{"id", record_id(r, "batch_req_")},
           {"custom_id", r.id},
           {"response", nullptr},
           {"error",
            {{"code", code}, {"message", message}, {"line", r.line}, {"param", param.empty() ? json() : json(param)}}}};
  }
  rec["_index"] = r.index;
  return rec;
}

std::optional<bool> record_exact_match(const json& rec) {
  const json& where = rec.contains("dgemma") ? rec["dgemma"] : rec;
  if (!where.is_object() || !where.contains("exact_match")) return std::nullopt;
  return where["exact_match"].get<bool>();
}

}  // namespace dg
