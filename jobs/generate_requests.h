// The request lines of `dgemma generate` (JSONL, one request per line), read and checked.
//
// Two forms:
//  - plain: {"id", "prompt": "text" | "messages": [...], "max_tokens" | "max_completion_tokens" |
//    "max_new_tokens", "temperature", "seed", "stop"}; other keys are ignored;
//  - the OpenAI batch form: {"custom_id", "method": "POST", "url": "/v1/chat/completions", "body": {"messages",
//    "max_tokens" | "max_completion_tokens", "temperature", "seed", "stop", ...}}; method and url may be left
//    out, and when given must be those; custom_id must be a string. The body's other fields are checked:
//    those that change nothing here are accepted (model, user, metadata, store, service_tier, ...), those
//    that only have their default value here are accepted with that value (n 1, top_p 1, the penalties 0,
//    logprobs false, stream false, response_format text), anything else (tools, logit_bias, an unknown
//    field, ...) is an error naming the field.
// Either form may carry "reference": "expected text" (held-out evaluation). Sampling fields, both forms:
//  - max_tokens, max_completion_tokens (and max_new_tokens): JSON integers in [1, 2^20], never narrowed;
//  - temperature: a number in (0, 2]; it multiplies the job's temperature schedule (1: the schedule as it
//    is, OpenAI's default); 0 (greedy decoding) has no equivalent in the block-diffusion sampler: refused;
//  - seed: a JSON integer (int64 or uint64; a negative one is taken modulo 2^64): the request's random numbers
//    are keyed by it instead of the line's position, so the same request with the same seed gives the same
//    text on any line (and in any file run with the same options, --seed included);
//  - stop: a non-empty string or an array of 1 to 4 of them: the text ends before the first one found.
// null is "not set" everywhere. Blank lines are skipped; a malformed line (invalid JSON or UTF-8, not an
// object, a key given twice, a bad field value), a duplicate id or an unsupported message or field is
// reported with its line number and either skipped (it gets an error record) or fatal (fail_on_error).
#pragma once
#include <cstdint>
#include <nlohmann/json.hpp>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

#include "io/chat_template.h"

namespace dg {

// A bad request: the message names the field; code and param are those of the OpenAI error object.
struct RequestError : std::runtime_error {
  RequestError(const std::string& message, std::string code_, std::string param_ = {})
      : std::runtime_error(message), code(std::move(code_)), param(std::move(param_)) {}
  std::string code, param;
};

struct Request {
  std::int64_t line = 0;     // 1-based input line
  std::int64_t index = 0;    // position among the requests (keys the randomness, orders the output)
  nlohmann::json id;         // the request's id (string or number; null: no readable id)
  bool openai = false;       // the OpenAI batch form: the result is written in the batch output form
  std::uint64_t line_hash = 0;  // of the line's bytes (the OpenAI form's ids are made from it)
  std::vector<ChatMessage> messages;
  int max_new_tokens = -1;   // the request's own limit (-1: the job's)
  std::optional<double> temperature;  // multiplies the job's schedule
  std::optional<std::uint64_t> seed;  // keys the request's random numbers in place of its position
  std::vector<std::string> stop;      // the text ends before the first of these found
  std::optional<std::string> reference;  // expected text, for exact-match scoring
  std::string error;         // non-empty: the line is bad; an error record is written
  std::string error_code, error_param;  // of the OpenAI error object ("invalid_request", "body.top_p", ...)
};

// Every non-blank line of `path`, in order. A line without a readable form (invalid JSON, not an object,
// neither id nor custom_id) is in the OpenAI form when every readable line of the file is.
std::vector<Request> read_requests(const std::string& path, bool fail_on_error);

std::string trim(const std::string& s);
std::string id_text(const nlohmann::json& id);
// One JSON line out: invalid UTF-8 (which no record should hold) becomes U+FFFD instead of throwing.
std::string dump_line(const nlohmann::json& j);
// Text that may hold invalid UTF-8 (a parser's message quoting the bytes it read) made valid UTF-8.
std::string valid_utf8(const std::string& s);

}  // namespace dg
