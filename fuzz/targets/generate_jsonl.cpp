// Fuzz target: the `dgemma generate` input JSONL. Its request-line parser, read_requests()
// (jobs/generate_requests.h), is called as the job calls it: the fuzzer exercises exactly the code the job runs.
//
// The input is a prompt file: read_requests(path, fail_on_error) on a scratch copy, with on-error=skip and
// on-error=fail; then every request it accepted is rendered the way the job renders it (Gemma chat
// template as text, and as ids with the test tokenizer, tests/fixtures/tokenizer, with the generation
// prompt). Invariants: one Request per non-blank line, in order; an accepted request has messages and a
// string or integer id (a string one in the OpenAI batch form); a refused one has an error code.
#include "io/chat_template.h"
#include "io/tokenizer.h"
#include "jobs/generate_requests.h"
#include "jobs/log.h"

#include "fuzz/targets/fuzz_util.h"

#ifndef DGEMMA_FIXTURES
#error "DGEMMA_FIXTURES (the tests/fixtures directory) must be defined"
#endif

namespace {
const dg::Tokenizer& fuzz_tokenizer() {
  static const dg::Tokenizer t = dg::Tokenizer::load(DGEMMA_FIXTURES "/tokenizer");
  return t;
}
}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  static const bool quiet = [] {
    dg::log::set_rank(1);  // log::warn prints on rank 0 only: keep skipped-line warnings off stderr
    return true;
  }();
  (void)quiet;
  const dg::Tokenizer& tok = fuzz_tokenizer();
  const std::string path = dg::fuzz::write_scratch(".jsonl", data, size);

  std::vector<dg::Request> requests;
  dg::fuzz::run_guarded([&] { requests = dg::read_requests(path, /*fail_on_error=*/false); });
  std::int64_t last_line = 0, index = 0;
  for (const dg::Request& r : requests) {
    if (r.line <= last_line || r.index != index++) dg::fuzz::invariant_failed("requests out of input order");
    last_line = r.line;
    if (!r.error.empty()) {
      if (r.error_code.empty()) dg::fuzz::invariant_failed("a refused request without an error code");
      continue;
    }
    if (r.messages.empty()) dg::fuzz::invariant_failed("an accepted request without messages");
    if (!r.id.is_string() && !r.id.is_number_integer()) dg::fuzz::invariant_failed("an accepted id of another type");
    if (r.openai && !r.id.is_string()) dg::fuzz::invariant_failed("an accepted custom_id that is not a string");
    dg::fuzz::run_guarded([&] {
      (void)dg::render_chat_text(r.messages, true);
      (void)dg::render_chat(tok, r.messages, true);
    });
  }
  dg::fuzz::run_guarded([&] { (void)dg::read_requests(path, /*fail_on_error=*/true); });
  return 0;
}
