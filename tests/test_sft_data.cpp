// SFT data pipeline and noising tests (placeholder while being written).
#include <doctest/doctest.h>
#include <fmt/ranges.h>
#include <filesystem>
#include "io/chat_template.h"
#include "io/tokenizer.h"
using namespace dg;
TEST_CASE("explore") {
  const Tokenizer tok = Tokenizer::load((std::filesystem::path(DGEMMA_FIXTURES) / "tokenizer").string());
  auto t = render_chat_sft(tok, {{"user", "hi"}, {"assistant", "ok"}});
  fmt::print("{}\n{}\n", t.ids, t.loss_mask);
  fmt::print("{} | {} | {} | {}\n", tok.encode("user\nhi"), tok.encode("\n"), tok.encode("model\nok"), tok.encode("ok"));
  t = render_chat_sft(tok, {{"user", "What is 2+2?"}, {"assistant", "It is 4. The answer is four."}});
  fmt::print("{}\n{}\n", t.ids, t.loss_mask);
  fmt::print("vocab {}\n", tok.vocab_size());
}
