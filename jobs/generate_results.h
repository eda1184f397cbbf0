// The result lines of `dgemma generate`, one per request line, in the form of the request:
//
//  - plain: {"id", "text", "finish_reason", "prompt_tokens", "completion_tokens", "canvases",
//    "denoising_steps", "tokens_per_forward", ["token_ids"], ["reference", "exact_match"]}, or
//    {"id", "error": {"line", "message"}} ("id": null for a line without a readable id);
//  - the OpenAI batch output form (the Batch API's request output object, also what vLLM's run-batch
//    writes): {"id": "batch_req_...", "custom_id", "response": {"status_code": 200, "request_id": "req_...",
//    "body": a chat.completion object: {"id": "chatcmpl-...", "object", "created", "model", "choices":
//    [{"index": 0, "message": {"role": "assistant", "content", "refusal": null}, "finish_reason", "logprobs":
//    null}], "usage": {"prompt_tokens", "completion_tokens", "total_tokens"}, "system_fingerprint"}},
//    "error": null, "dgemma": {"canvases", "denoising_steps", "tokens_per_forward", "generated_tokens",
//    ["token_ids"], ["reference", "exact_match"]}}. A failed request has "response": null and "error":
//    {"code", "message", "line", "param"} (the reference calls `error` the object of a request that failed
//    without an HTTP response, which is every failure here; "line" and "param" are those of the openai
//    package's BatchError); its "custom_id" is null when the line had no readable one. The ids are made
//    from the line's bytes and number (the same input gives the same ids, a resumed run too).
//
// The text: the generated tokens without the EOS, decoded. In the OpenAI form, a request's own max_tokens is
// a hard limit (the sampler generates whole canvases; the tokens past the limit are dropped, finish_reason
// "length"); in the plain form the limit is rounded up to whole canvases, as the reference does. A stop
// string cuts the text before its first occurrence (finish_reason "stop"), both forms; completion_tokens
// then counts the tokens up to the one that completes the stop string (as vLLM does).
#pragma once
#include <cstdint>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>

#include "io/tokenizer.h"
#include "jobs/generate_requests.h"
#include "layers/generation.h"

namespace dg {

struct Completion {
  std::string text;
  std::string finish_reason;           // "stop" or "length"
  std::int64_t prompt_tokens = 0;
  std::int64_t completion_tokens = 0;  // the tokens of the text returned (pads not counted, the EOS counted)
};

Completion make_completion(const Request& r, const GenerationResult& res, std::int64_t prompt_tokens,
                           const Tokenizer& tok, const GenerationConfig& g);

// What the OpenAI form's chat.completion names: the model and the creation time (Unix seconds).
struct CompletionMeta {
  std::string model;
  std::int64_t created = 0;
  bool token_ids = false;  // also write the generated token ids
};

// The record of a request (with "_index", the request's position, for the partial outputs).
nlohmann::json result_record(const Request& r, const Completion& c, const GenerationResult& res,
                             const CompletionMeta& meta);
nlohmann::json error_record(const Request& r, const std::string& message, const std::string& code,
                            const std::string& param);
// A record's exact_match (either form); nullopt when its request had no reference.
std::optional<bool> record_exact_match(const nlohmann::json& rec);

}  // namespace dg
