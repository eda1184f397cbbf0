// Fuzz target: tokenizer.json loading (io/tokenizer.h, io/tokenizer_load.cpp). The input is the text of a
// tokenizer.json: parse_json_strict + Tokenizer::from_json, the path Tokenizer::load takes after reading the
// file. A tokenizer that loads is then used: fixed texts (ASCII, multi-byte UTF-8, invalid UTF-8, the
// Gemma special-token strings, long runs) are encoded with and without special-token parsing, with
// offsets, and decoded back; ids out of range are decoded too.
// Invariants: every id from encode() lies in [0, vocab_size); offsets are one span per id, inside the text.
// (Spans are not always in text order: with byte_fallback and a vocab lacking some <0xNN> tokens, a fused
// <unk> is emitted after the byte tokens of the next character, exactly as `tokenizers`' BPE merge_word
// does; fuzz/corpus/tokenizer/found-unk-after-byte-fallback.json is such a file.)
#include <string>
#include <string_view>
#include <vector>

#include "fuzz/targets/fuzz_util.h"
#include "io/strict_json.h"
#include "io/tokenizer.h"

using namespace dg;

namespace {
const std::string kTexts[] = {
    "",
    "Hello, world! 123 4567",
    "  leading and trailing spaces  \n\n\ttabs\r\n",
    "h\xc3\xa9llo w\xc3\xb6rld \xe4\xb8\xad\xe6\x96\x87 \xf0\x9f\x98\x80 emoji",
    std::string("bad utf8 \xff\xfe \xc3 \xe4\xb8 \xf0\x9f\x98 end") + std::string(1, '\0') + "nul",
    "<bos><|turn>user\nWhat is 2+2?<turn|>\n<|turn>model\n<|channel>thought\n<channel|>4<turn|>\n<eos><pad>",
    "<unk> <mask> [multimodal] <start_of_image> <|think|> <turn|<|turn>",
    std::string(300, 'a') + std::string(40, ' ') + std::string(100, '\n'),
};
}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::string_view text(reinterpret_cast<const char*>(data), size);
  fuzz::run_guarded([&] {
    const Tokenizer t = Tokenizer::from_json(parse_json_strict(text, "fuzz/tokenizer.json"), "fuzz/tokenizer.json");
    const int vocab = t.vocab_size();
    if (vocab < 0) fuzz::invariant_failed("negative vocab_size");
    for (const std::string& s : kTexts) {
      for (bool special : {true, false}) {
        std::vector<TokenSpan> spans;
        const std::vector<std::int32_t> ids = t.encode_with_offsets(s, spans, special);
        if (ids != t.encode(s, special)) fuzz::invariant_failed("encode() and encode_with_offsets() differ");
        if (spans.size() != ids.size()) fuzz::invariant_failed("one offset span per id");
        for (std::size_t i = 0; i < ids.size(); ++i) {
          if (ids[i] < 0 || ids[i] >= vocab) fuzz::invariant_failed("encoded id outside [0, vocab_size)");
          if (spans[i].begin > spans[i].end || spans[i].end > s.size())
            fuzz::invariant_failed("offset span outside the text");
          (void)t.id_to_token(ids[i]);
          (void)t.is_special(ids[i]);
        }
        (void)t.decode(ids, false);
        (void)t.decode(ids, true);
      }
    }
    const std::vector<std::int32_t> odd = {0, 1, 2, 3, -1, vocab - 1, vocab, vocab + 1, 2147483647, -2147483647 - 1};
    (void)t.decode(odd, false);
    (void)t.decode(odd, true);
    for (std::int32_t id : odd) (void)t.id_to_token(id), (void)t.is_special(id);
    for (const char* tok : {"<bos>", "<eos>", "<pad>", "<unk>", "<turn|>", "<|turn>", "a", ""})
      (void)t.token_to_id(tok);
  });
  return 0;
}
