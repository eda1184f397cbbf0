// What the built-in tiny default needs without any file: the tokenizer files (compiled in from
// tests/fixtures/tokenizer, made by scripts/fixtures/make_tokenizer_fixtures.py) and a small
// synthetic chat dataset that a tiny model visibly learns in a few hundred steps.
#pragma once
#include <string>
#include <string_view>

#include "io/tokenizer.h"

namespace dg {

namespace builtin {
std::string_view tokenizer_json();
std::string_view tokenizer_config_json();
std::string_view chat_template_jinja();
}  // namespace builtin

Tokenizer builtin_tokenizer();
// Writes tokenizer.json, tokenizer_config.json and chat_template.jinja into `dir` (no clobbering).
void write_builtin_tokenizer(const std::string& dir);
// JSONL chat examples: short arithmetic questions with templated answers ("What is 3 plus 4?" ->
// "3 plus 4 is 7."), deterministic, `count` lines.
std::string builtin_sft_dataset(int count = 512);

}  // namespace dg
