#include "io/builtin.h"

#include <fmt/format.h>

#include <nlohmann/json.hpp>

#include "io/atomic_file.h"

namespace dg {

Tokenizer builtin_tokenizer() {
  return Tokenizer::from_json(nlohmann::json::parse(builtin::tokenizer_json()), "<built-in tokenizer.json>");
}

void write_builtin_tokenizer(const std::string& dir) {
  write_file_atomic(dir + "/tokenizer.json", builtin::tokenizer_json(), false);
  write_file_atomic(dir + "/tokenizer_config.json", builtin::tokenizer_config_json(), false);
  write_file_atomic(dir + "/chat_template.jinja", builtin::chat_template_jinja(), false);
}

std::string builtin_sft_dataset(int count) {
  static const char* const kOps[] = {"plus", "minus", "times"};
  std::string out;
  for (int i = 0; i < count; ++i) {
    const int a = (i * 7 + 3) % 13, b = (i * 5 + 1) % 11, op = i % 3;
    const int r = op == 0 ? a + b : op == 1 ? a - b : a * b;
    nlohmann::json line = {{"messages",
                            {{{"role", "user"}, {"content", fmt::format("What is {} {} {}?", a, kOps[op], b)}},
                             {{"role", "assistant"}, {"content", fmt::format("{} {} {} is {}.", a, kOps[op], b, r)}}}}};
    out += line.dump() + "\n";
  }
  return out;
}

}  // namespace dg
