// What the built-in tiny default needs without any file: the tokenizer files (compiled in from
// tests/fixtures/tokenizer, made by scripts/fixtures/make_tokenizer_fixtures.py) and the tiny SFT task's
// training set (jobs/examples/tiny-task/train.jsonl, made by scripts/make_tiny_task.py).
#pragma once
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "io/tokenizer.h"

namespace dg {

namespace builtin {
std::string_view tokenizer_json();
std::string_view tokenizer_config_json();
std::string_view chat_template_jinja();    // the Gemma 4 template as shipped with the 26B model
std::string_view tiny_task_train_jsonl();  // "Add one to each digit: 3 8 1" -> "4 9 2", 6000 lines
}  // namespace builtin

Tokenizer builtin_tokenizer();

// The chat template of the tiny preset: the Gemma 4 template without the empty thought channel that
// the large model's generation prompt appends (`<|channel>thought\n<channel|>`), as Gemma 4's small
// models ship it. The SFT rendering of a supervised turn (as NeMo's) never contains that channel, so a
// model trained from scratch on it must be prompted without it; see README "Fine-tuning".
std::string builtin_chat_template();

// The tokenizer files of the tiny preset as (file name, contents): tokenizer.json,
// tokenizer_config.json and chat_template.jinja (builtin_chat_template()).
std::vector<std::pair<std::string, std::string>> builtin_tokenizer_files();

}  // namespace dg
