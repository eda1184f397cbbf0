#include "io/builtin.h"

#include <nlohmann/json.hpp>

#include "layers/error.h"

namespace dg {

Tokenizer builtin_tokenizer() {
  return Tokenizer::from_json(nlohmann::json::parse(builtin::tokenizer_json()), "<built-in tokenizer.json>");
}

std::string builtin_chat_template() {
  std::string t(builtin::chat_template_jinja());
  const std::string block =
      "    {%- if not thinking -%}\n"
      "        {{- '<|channel>thought\\n<channel|>' -}}\n"
      "    {%- endif -%}\n";
  const auto at = t.find(block);
  DG_CHECK(at != std::string::npos, "built-in chat template: the empty thought channel block was not found");
  t.erase(at, block.size());
  return t;
}

std::vector<std::pair<std::string, std::string>> builtin_tokenizer_files() {
  return {{"tokenizer.json", std::string(builtin::tokenizer_json())},
          {"tokenizer_config.json", std::string(builtin::tokenizer_config_json())},
          {"chat_template.jinja", builtin_chat_template()}};
}

}  // namespace dg
