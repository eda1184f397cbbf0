// SFT data pipeline (io/sft_data.h) and SFT noising (layers/noise.h), training.md §2 and §3.
//
// Expectations are derived from the spec, not from the code under test: the Gemma 4 chat format is
// rebuilt here from its pieces (`<bos>`, then per turn `<|turn>` + encode(header + content) + `<turn|>` +
// encode("\n"), each text run between two special markers encoded on its own), the response window from
// fill_end = P + ceil((C-P)/Bk)*Bk capped at max_seq_len, and the micro-batch layout from §2.2/§2.3.
//
// Statistical checks use a 5-sigma two-sided binomial (normal approximation) bound: a correct
// implementation fails one such check with probability ~6e-7, so the few hundred checks below have a
// combined false-failure chance below 1e-3; the draws are keyed (deterministic), so a pass is stable.
#include <doctest/doctest.h>

#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <cmath>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <map>
#include <numeric>
#include <set>
#include <sstream>
#include <string>
#include <tuple>
#include <type_traits>
#include <vector>

#include <nlohmann/json.hpp>

#include "io/chat_template.h"
#include "io/sft_data.h"
#include "io/tokenizer.h"
#include "layers/error.h"
#include "layers/noise.h"

using namespace dg;
using json = nlohmann::json;
using Ids = std::vector<std::int32_t>;

namespace {

const Tokenizer& tok() {
  static const Tokenizer t = Tokenizer::load((std::filesystem::path(DGEMMA_FIXTURES) / "tokenizer").string());
  return t;
}
std::int32_t id_of(const char* token) { return tok().require_id(token); }
Ids enc(const std::string& s) { return tok().encode(s); }
void append(Ids& to, const Ids& from) { to.insert(to.end(), from.begin(), from.end()); }

struct Turn {
  std::string role, text;  // text as it should appear once trimmed
};

// The spec's rendering (training.md §2.1, chat_template.h): ids and P, the index of the first
// supervised token (the start of the last answer). The answer is required not to share a token with
// its `model\n` header, so that P is exactly the header's end.
struct Rendered {
  Ids ids;
  std::int32_t P = -1;
  std::int32_t C() const { return static_cast<std::int32_t>(ids.size()); }
};

Rendered expected_render(const std::vector<Turn>& turns) {
  Rendered r;
  r.ids.push_back(id_of("<bos>"));
  for (std::size_t i = 0; i < turns.size(); ++i) {
    const std::string& role = turns[i].role;
    const std::string header = role == "assistant" || role == "model" ? "model\n"
                               : role == "system"                      ? "system\n"
                                                                       : "user\n";
    r.ids.push_back(id_of("<|turn>"));
    if (i + 1 == turns.size()) {
      const Ids h = enc(header), a = enc(turns[i].text);
      Ids joined = h;
      append(joined, a);
      INFO("the answer must not share a token with its header: " << turns[i].text);
      REQUIRE(enc(header + turns[i].text) == joined);
      append(r.ids, h);
      r.P = static_cast<std::int32_t>(r.ids.size());
      append(r.ids, a);
    } else {
      append(r.ids, enc(header + turns[i].text));
    }
    r.ids.push_back(id_of("<turn|>"));
    append(r.ids, enc("\n"));
  }
  return r;
}

std::string msgs_line(const std::vector<Turn>& turns) {
  json m = json::array();
  for (const Turn& t : turns) m.push_back({{"role", t.role}, {"content", t.text}});
  return json{{"messages", m}}.dump();
}

SftDataOptions options(int max_seq_len = 1024, int Bk = 8) {
  SftDataOptions o;
  o.max_seq_len = max_seq_len;
  o.canvas_length = Bk;
  o.pad_id = id_of("<pad>");
  o.eos_fill_id = id_of("<eos>");
  return o;
}

SftDataset read(const std::string& text, const SftDataOptions& o, const std::string& what = "mem.jsonl") {
  std::istringstream in(text);
  return read_sft_dataset(in, what, tok(), o);
}

template <class F>
std::string config_error(F&& f) {
  try {
    f();
  } catch (const ConfigError& e) {
    return e.what();
  }
  FAIL("expected a ConfigError");
  return {};
}

bool contains(const std::string& s, const std::string& part) { return s.find(part) != std::string::npos; }

std::int64_t ceil_div(std::int64_t a, std::int64_t b) { return (a + b - 1) / b; }

// A k-word answer / question from a fixed text (plain words: no straddling with the header).
std::string words(int k, int offset = 0) {
  static const std::vector<std::string> w = {
      "the", "cat", "sat", "on", "the", "mat", "and", "then", "it", "ran", "away", "from", "the", "big", "red",
      "dog", "that", "was", "near", "the", "old", "barn", "by", "the", "river", "under", "a", "tall", "green",
      "tree", "while", "birds", "sang", "songs", "all", "day", "long"};
  std::string out;
  for (int i = 0; i < k; ++i) {
    if (i) out += ' ';
    out += w[static_cast<std::size_t>(i + offset) % w.size()];
  }
  out[0] = static_cast<char>(std::toupper(static_cast<unsigned char>(out[0])));
  return out;
}

// 5-sigma binomial bound (see the file comment); +1 absorbs the discreteness for tiny n*p.
bool within_binomial(double count, double n, double p) {
  return std::abs(count - n * p) <= 5.0 * std::sqrt(n * p * (1.0 - p)) + 1.0;
}

const std::string kQ = "What is two plus two?";
const std::string kA = "Two plus two is four.";

}  // namespace

// ================================================================================================
// Rendering and the loss mask
// ================================================================================================

TEST_CASE("render_chat_sft: only the last model turn's content, its <turn|> and newline are supervised") {
  const std::int32_t turn_open = id_of("<|turn>"), turn_close = id_of("<turn|>");
  const Ids nl = enc("\n");
  REQUIRE(nl.size() == 1);

  SUBCASE("single turn") {
    const Rendered e = expected_render({{"user", kQ}, {"assistant", kA}});
    const SftTokens s = render_chat_sft(tok(), {{"user", kQ}, {"assistant", kA}});
    CHECK(s.ids == e.ids);
    REQUIRE(s.loss_mask.size() == s.ids.size());
    CHECK(s.first_supervised == static_cast<std::size_t>(e.P));
    for (std::size_t i = 0; i < s.ids.size(); ++i) {
      INFO("position " << i);
      CHECK(s.loss_mask[i] == (i >= static_cast<std::size_t>(e.P) ? 1 : 0));
    }
    // The supervised run is exactly answer + <turn|> + "\n".
    Ids sup(s.ids.begin() + e.P, s.ids.end());
    Ids want = enc(kA);
    want.push_back(turn_close);
    append(want, nl);
    CHECK(sup == want);
    // The `<|turn>model\n` header right before it is prompt.
    const std::size_t header = enc("model\n").size();
    CHECK(s.ids[static_cast<std::size_t>(e.P) - header - 1] == turn_open);
    CHECK(s.loss_mask[static_cast<std::size_t>(e.P) - header - 1] == 0);
    CHECK(s.loss_mask[static_cast<std::size_t>(e.P) - 1] == 0);
  }

  SUBCASE("multi-turn: earlier assistant turns are prompt") {
    const std::vector<Turn> turns = {{"user", kQ}, {"assistant", "It is four."}, {"user", "And three plus three?"},
                                     {"assistant", "Three plus three is six."}};
    const Rendered e = expected_render(turns);
    std::vector<ChatMessage> m;
    for (const Turn& t : turns) m.push_back({t.role, t.text});
    const SftTokens s = render_chat_sft(tok(), m);
    CHECK(s.ids == e.ids);
    CHECK(s.first_supervised == static_cast<std::size_t>(e.P));
    const std::int64_t supervised = std::count(s.loss_mask.begin(), s.loss_mask.end(), std::uint8_t{1});
    CHECK(supervised == static_cast<std::int64_t>(enc("Three plus three is six.").size() + 1 + nl.size()));
    // The first answer's tokens (and its <turn|>) sit before P: unsupervised.
    const auto first_close = std::find(s.ids.begin(), s.ids.end(), turn_close);
    const auto second_close = std::find(first_close + 1, s.ids.end(), turn_close);
    REQUIRE(second_close != s.ids.end());
    CHECK(second_close - s.ids.begin() < e.P);
    CHECK(s.loss_mask[static_cast<std::size_t>(second_close - s.ids.begin())] == 0);
    // The prompt holds the <turn|> of all three earlier turns.
    CHECK(std::count(s.ids.begin(), s.ids.begin() + e.P, turn_close) == 3);
  }

  SUBCASE("system turn, trimming and thought stripping") {
    const Rendered e = expected_render({{"system", "Be brief."}, {"user", kQ}, {"assistant", kA}});
    const SftTokens s = render_chat_sft(
        tok(), {{"system", "  Be brief.\n"}, {"user", " " + kQ + "\n"}, {"assistant", "<|channel>thought\nhmm<channel|>  " + kA + " \n"}});
    CHECK(s.ids == e.ids);
    CHECK(s.first_supervised == static_cast<std::size_t>(e.P));
  }
}

// ================================================================================================
// Reading lines
// ================================================================================================

TEST_CASE("dataset lines: messages, prompt/response and prompt/completion give the same example") {
  const Rendered e = expected_render({{"user", kQ}, {"assistant", kA}});
  const std::vector<std::string> lines = {
      msgs_line({{"user", kQ}, {"assistant", kA}}),
      msgs_line({{"user", kQ}, {"model", kA}}),
      json{{"prompt", kQ}, {"response", kA}}.dump(),
      json{{"prompt", kQ}, {"completion", kA}}.dump(),
      R"({"id": 17, "source": "gsm8k", "messages": [{"role": "user", "content": ")" + kQ +
          R"("}, {"role": "assistant", "content": ")" + kA + R"(", "name": "x"}]})",
  };
  std::string text;
  for (const auto& l : lines) text += l + "\n";
  const SftDataset d = read(text, options());
  REQUIRE(d.examples.size() == lines.size());
  CHECK(d.skipped.empty());
  CHECK(d.stats.lines == static_cast<std::int64_t>(lines.size()));
  CHECK(d.stats.kept == static_cast<std::int64_t>(lines.size()));
  for (std::size_t i = 0; i < d.examples.size(); ++i) {
    INFO("line " << i + 1);
    const SftExample& x = d.examples[i];
    CHECK(x.ids == e.ids);
    CHECK(x.prompt_len == e.P);
    CHECK(x.line == static_cast<std::int64_t>(i + 1));
    CHECK(x.content_len() == e.C());
    CHECK(x.response_len() == e.C() - e.P);
  }

  SUBCASE("multi-turn line: the earlier assistant turn is prompt") {
    const std::vector<Turn> turns = {
        {"system", "Be brief."}, {"user", kQ}, {"assistant", "It is four."}, {"user", "And three plus three?"},
        {"assistant", "Six."}};
    const Rendered m = expected_render(turns);
    const SftDataset d2 = read(msgs_line(turns) + "\n", options());
    REQUIRE(d2.examples.size() == 1);
    CHECK(d2.examples[0].ids == m.ids);
    CHECK(d2.examples[0].prompt_len == m.P);
    CHECK(d2.examples[0].response_len() == static_cast<std::int32_t>(enc("Six.").size() + 2));
  }

  SUBCASE("parse_sft_line maps the forms to chat messages") {
    const auto m = parse_sft_line(json{{"prompt", "a"}, {"completion", "b"}}.dump());
    REQUIRE(m.size() == 2);
    CHECK(m[0].role == "user");
    CHECK(m[0].content == "a");
    CHECK(m[1].role == "assistant");
    CHECK(m[1].content == "b");
  }
}

TEST_CASE("OpenAI per-message weights: only the last assistant turn may be (and is) supervised") {
  const auto line = [](json w_first, json w_last) {
    json m = json::array();
    m.push_back({{"role", "user"}, {"content", kQ}});
    json a1 = {{"role", "assistant"}, {"content", "It is four."}};
    if (!w_first.is_null()) a1["weight"] = w_first;
    m.push_back(a1);
    m.push_back({{"role", "user"}, {"content", "Sure?"}});
    json a2 = {{"role", "assistant"}, {"content", kA}};
    if (!w_last.is_null()) a2["weight"] = w_last;
    m.push_back(a2);
    return json{{"messages", m}}.dump() + "\n";
  };
  SftDataOptions o = options();
  o.fail_on_error = true;
  const Rendered e = expected_render({{"user", kQ}, {"assistant", "It is four."}, {"user", "Sure?"}, {"assistant", kA}});

  // Weight 0 on earlier turns and 1 on the last is what mask_history does anyway: accepted, same example.
  for (const auto& [wf, wl] : std::vector<std::pair<json, json>>{{0, 1}, {nullptr, 1}, {0, nullptr}, {nullptr, nullptr}}) {
    const SftDataset d = read(line(wf, wl), o);
    REQUIRE(d.examples.size() == 1);
    CHECK(d.examples[0].ids == e.ids);
    CHECK(d.examples[0].prompt_len == e.P);
  }
  const std::string earlier = config_error([&] { (void)read(line(1, 1), o, "w.jsonl"); });
  CHECK(contains(earlier, "w.jsonl:1: "));
  CHECK(contains(earlier, "weight 1 on an earlier message"));
  const std::string last0 = config_error([&] { (void)read(line(0, 0), o, "w.jsonl"); });
  CHECK(contains(last0, "w.jsonl:1: "));
  CHECK(contains(last0, "last message has weight 0"));
  for (const json& bad : {json(2), json("1"), json(0.5), json(-1)}) {
    const std::string msg = config_error([&] { (void)read(line(nullptr, bad), o, "w.jsonl"); });
    CHECK(contains(msg, "'weight' must be 0 or 1"));
  }
}

TEST_CASE("bad lines: errors name FILE:LINE and the reason") {
  const std::string good = msgs_line({{"user", kQ}, {"assistant", kA}});
  const std::vector<std::pair<std::string, std::string>> cases = {
      {R"({"messages": [)", "invalid JSON"},
      {R"({"messages": [], "messages": []})", "duplicate key"},
      {R"([1, 2])", "must be a JSON object"},
      {R"({"text": "hello"})", "needs 'messages'"},
      {R"({"messages": []})", "'messages' must be a non-empty array"},
      {R"({"messages": "hi"})", "'messages' must be a non-empty array"},
      {R"({"messages": ["hi"]})", "message 0: must be an object"},
      {R"({"messages": [{"content": "q"}, {"role": "assistant", "content": "a"}]})", "message 0: no 'role'"},
      {R"({"messages": [{"role": "user"}, {"role": "assistant", "content": "a"}]})", "message 0: no 'content'"},
      {R"({"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": 7}]})",
       "message 1: 'content' must be a string"},
      {R"({"messages": [{"role": "user", "content": null}, {"role": "assistant", "content": "a"}]})",
       "message 0: 'content' must be a string"},
      {R"({"messages": [{"role": "user", "content": [{"type": "text", "text": "q"}]}, {"role": "assistant", "content": "a"}]})",
       "'content' must be a string"},
      {R"({"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}, {"role": "assistant", "content": "b"}]})",
       "consecutive assistant"},
      {R"({"messages": [{"role": "user", "content": "q"}, {"role": "system", "content": "s"}, {"role": "assistant", "content": "a"}]})",
       "only supported as the first"},
      {R"({"messages": [{"role": "user", "content": "q"}, {"role": "tool", "content": "t"}, {"role": "assistant", "content": "a"}]})",
       "role \"tool\" is not supported"},
      {R"({"messages": [{"role": "user", "content": "q"}]})", "must end with an assistant message"},
      {R"({"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}, {"role": "user", "content": "r"}]})",
       "must end with an assistant message"},
      {R"({"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "  \n "}]})", "empty response"},
      {R"({"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "<|channel>thought\nx<channel|>"}]})",
       "empty response"},
      {R"({"prompt": "q", "response": ""})", "empty response"},
      {R"({"prompt": "q"})", "needs a 'response' or 'completion'"},
      {R"({"prompt": 3, "response": "a"})", "'prompt' must be a string"},
      {R"({"prompt": "q", "completion": ["a"]})", "'completion' must be a string"},
  };

  SUBCASE("fail_on_error: a ConfigError on the first bad line, FILE:LINE: reason") {
    SftDataOptions o = options();
    o.fail_on_error = true;
    for (const auto& [bad, reason] : cases) {
      INFO(bad);
      // line 1 good, line 2 blank, line 3 bad, line 4 bad in another way: line 3 is the one reported.
      const std::string text = good + "\n\n" + bad + "\n" + R"({"text": "second bad line"})" + "\n" + good + "\n";
      const std::string msg = config_error([&] { (void)read(text, o, "data.jsonl"); });
      INFO(msg);
      CHECK(msg.rfind("data.jsonl:3: ", 0) == 0);
      CHECK(contains(msg, reason));
      if (reason != "needs 'messages'") CHECK_FALSE(contains(msg, "needs 'messages'"));
    }
  }

  SUBCASE("skip mode: every bad line is recorded with its line and reason, the good ones are kept") {
    std::string text;
    std::vector<std::int64_t> bad_lines;
    std::int64_t line = 0;
    for (const auto& [bad, reason] : cases) {
      text += good + "\n";
      ++line;
      text += "   \t\n";  // whitespace-only: skipped, but counted in the line numbers
      ++line;
      text += bad + "\n";
      bad_lines.push_back(++line);
    }
    text += good;  // no trailing newline
    ++line;
    const SftDataset d = read(text, options(), "data.jsonl");
    REQUIRE(d.skipped.size() == cases.size());
    for (std::size_t i = 0; i < cases.size(); ++i) {
      INFO(cases[i].first);
      CHECK(d.skipped[i].line == bad_lines[i]);
      CHECK(contains(d.skipped[i].message, cases[i].second));
      CHECK_FALSE(contains(d.skipped[i].message, "data.jsonl:"));  // the reason, without the prefix
    }
    CHECK(d.examples.size() == cases.size() + 1);
    CHECK(d.stats.lines == static_cast<std::int64_t>(2 * cases.size() + 1));
    CHECK(d.stats.kept == static_cast<std::int64_t>(cases.size() + 1));
    CHECK(d.stats.skipped == static_cast<std::int64_t>(cases.size()));
    for (std::size_t i = 0; i < d.examples.size(); ++i) CHECK(d.examples[i].line == static_cast<std::int64_t>(3 * i + 1));
    const json sj = d.stats.to_json();
    CHECK(sj["kept"] == d.stats.kept);
    CHECK(sj["skipped"] == d.stats.skipped);
    CHECK(sj["lines"] == d.stats.lines);
  }

  SUBCASE("an all-bad or empty file is a ConfigError") {
    const std::string all_bad = std::string(R"({"text": 1})") + "\n\n" + R"({"prompt": "q", "response": " "})" + "\n";
    const std::string msg = config_error([&] { (void)read(all_bad, options(), "bad.jsonl"); });
    CHECK(contains(msg, "bad.jsonl"));
    CHECK(contains(msg, "no usable example"));
    CHECK(contains(msg, "bad.jsonl:1: "));  // the first skipped line is named
    CHECK(contains(msg, "needs 'messages'"));
    CHECK(contains(config_error([&] { (void)read("", options(), "empty.jsonl"); }), "empty.jsonl"));
    CHECK(contains(config_error([&] { (void)read("\n  \n\t\n", options(), "blank.jsonl"); }), "no usable example"));
  }

  SUBCASE("blank lines and CRLF line ends") {
    const std::string text = "\r\n" + good + "\r\n\r\n  \t \r\n" + good + "\r\n";
    const SftDataset d = read(text, options());
    REQUIRE(d.examples.size() == 2);
    CHECK(d.examples[0].line == 2);
    CHECK(d.examples[1].line == 5);
    CHECK(d.stats.lines == 2);
    CHECK(d.skipped.empty());
    CHECK(d.examples[0].ids == expected_render({{"user", kQ}, {"assistant", kA}}).ids);
  }
}

TEST_CASE("load_sft_dataset reads a file and names it in errors") {
  namespace fs = std::filesystem;
  const fs::path dir = fs::temp_directory_path() / fs::path("dgemma_test_sft_data_" + std::to_string(::getpid()));
  fs::create_directories(dir);
  const fs::path good = dir / "good.jsonl", bad = dir / "bad.jsonl";
  {
    std::ofstream(good) << msgs_line({{"user", kQ}, {"assistant", kA}}) << "\n";
    std::ofstream(bad) << msgs_line({{"user", kQ}, {"assistant", kA}}) << "\n{oops\n";
  }
  const SftDataset d = load_sft_dataset(good.string(), tok(), options());
  CHECK(d.path == good.string());
  CHECK(d.examples.size() == 1);
  SftDataOptions o = options();
  o.fail_on_error = true;
  const std::string msg = config_error([&] { (void)load_sft_dataset(bad.string(), tok(), o); });
  CHECK(msg.rfind(bad.string() + ":2: ", 0) == 0);
  CHECK(contains(msg, "invalid JSON"));
  CHECK(contains(config_error([&] { (void)load_sft_dataset((dir / "missing.jsonl").string(), tok(), options()); }),
                 "missing.jsonl"));
  fs::remove_all(dir);
}

TEST_CASE("the fingerprint follows the kept examples' content") {
  const std::string a = msgs_line({{"user", kQ}, {"assistant", kA}});
  const std::string b = msgs_line({{"user", kQ}, {"assistant", "Four."}});
  const auto fp = [](const std::string& text) { return read(text, options()).fingerprint; };
  CHECK(fp(a + "\n" + b + "\n") == fp(a + "\n" + b + "\n"));
  CHECK(fp(a + "\n" + b + "\n") == fp("\n" + a + "\n\n" + b + "\n{bad\n"));  // blank and skipped lines do not count
  CHECK(fp(a + "\n" + b + "\n") != fp(b + "\n" + a + "\n"));
  CHECK(fp(a + "\n" + b + "\n") != fp(a + "\n" + a + "\n"));
  CHECK(fp(a + "\n") != fp(a + "\n" + a + "\n"));
}

// ================================================================================================
// Response window, EOS fill, truncation
// ================================================================================================

TEST_CASE("response window: fill_end = P + ceil((C-P)/Bk)*Bk, the EOS fill and the stats") {
  const int Bk = 8;
  std::string text;
  std::vector<Rendered> want;
  for (int k = 1; k <= 24; ++k) {
    const std::vector<Turn> turns = {{"user", "Tell me " + words(1 + k % 5, 20)}, {"assistant", words(k)}};
    want.push_back(expected_render(turns));
    text += msgs_line(turns) + "\n";
  }
  const SftDataOptions o = options(1024, Bk);
  const SftDataset d = read(text, o);
  REQUIRE(d.examples.size() == want.size());
  std::set<std::int64_t> residues;
  std::int64_t prompt = 0, response = 0, fill = 0, blocks = 0, rmin = 1 << 30, rmax = 0;
  std::int32_t max_id = -1;
  for (std::size_t i = 0; i < want.size(); ++i) {
    INFO("example " << i);
    const SftExample& x = d.examples[i];
    const Rendered& e = want[i];
    REQUIRE(x.ids == e.ids);
    REQUIRE(x.prompt_len == e.P);
    const std::int64_t C = e.C(), P = e.P;
    residues.insert((C - P) % Bk);
    const std::int64_t fill_end = P + ceil_div(C - P, Bk) * Bk;
    CHECK(x.fill_end == fill_end);
    CHECK(x.canvas_len() == fill_end - P);
    CHECK(x.canvas_len() % Bk == 0);
    CHECK(x.fill_end - x.content_len() < Bk);
    prompt += P;
    response += C - P;
    fill += fill_end - C;
    blocks += ceil_div(C - P, Bk);
    rmin = std::min(rmin, C - P);
    rmax = std::max(rmax, C - P);
    for (const std::int32_t t : e.ids) max_id = std::max(max_id, t);
  }
  // The lengths cover a response that is an exact multiple of Bk (no fill) and several that are not.
  REQUIRE(residues.count(0) == 1);
  REQUIRE(residues.size() >= 4);
  CHECK(d.stats.prompt_tokens == prompt);
  CHECK(d.stats.response_tokens == response);
  CHECK(d.stats.fill_tokens == fill);
  CHECK(d.stats.canvas_blocks == blocks);
  CHECK(d.stats.response_min == rmin);
  CHECK(d.stats.response_max == rmax);
  CHECK(d.stats.max_token_id == max_id);
  CHECK(d.stats.truncated == 0);
  const json sj = d.stats.to_json();
  CHECK(sj["fill_tokens"] == fill);
  CHECK(sj["response_mean"].get<double>() == doctest::Approx(static_cast<double>(response) / static_cast<double>(want.size())));
  CHECK(contains(d.stats.summary(), std::to_string(want.size()) + " examples kept"));

  // In the assembled micro-batch the fill is the EOS id, attended and supervised (canvas_mask 1).
  std::vector<std::int64_t> all(want.size()), ks(want.size());
  std::iota(all.begin(), all.end(), 0);
  std::iota(ks.begin(), ks.end(), 0);
  const SftMicroBatch mb = assemble_micro_batch(d, all, ks, o);
  std::int64_t fill_seen = 0;
  for (std::size_t b = 0; b < want.size(); ++b) {
    const std::size_t S = static_cast<std::size_t>(mb.S), R = static_cast<std::size_t>(mb.R);
    const std::int32_t P = want[b].P, C = want[b].C(), F = d.examples[b].fill_end;
    for (std::int32_t t = C; t < F; ++t) {
      CHECK(mb.input_ids[b * S + static_cast<std::size_t>(t)] == o.eos_fill_id);
      CHECK(mb.attention[b * S + static_cast<std::size_t>(t)] == 1);
      CHECK(mb.canvas_mask[b * R + static_cast<std::size_t>(t - P)] == 1);
      CHECK(mb.canvas_target[b * R + static_cast<std::size_t>(t - P)] == o.eos_fill_id);
      ++fill_seen;
    }
  }
  CHECK(fill_seen == fill);
  CHECK(fill_seen > 0);
}

TEST_CASE("truncation: Right cuts at max_seq_len, Drop skips; a prompt that fills max_seq_len is skipped") {
  const std::string q = "Please answer the following question about the cat on the mat carefully.";
  const std::string a = "The cat sat on the mat and then it ran away from the big red dog.";
  const Rendered e = expected_render({{"user", q}, {"assistant", a}});
  const std::int32_t P = e.P, C = e.C();
  REQUIRE(C - P >= 6);
  const int Bk = C - P + 3;  // the response takes one block, with 3 fill tokens
  const std::int32_t full = P + Bk;
  const std::string line = msgs_line({{"user", q}, {"assistant", a}});
  const std::string short_line = msgs_line({{"user", "Hi"}, {"assistant", "Ok"}});
  const Rendered s = expected_render({{"user", "Hi"}, {"assistant", "Ok"}});
  REQUIRE(s.P + 2 < P);

  const auto with = [&](int cap, SftTruncation tr) {
    SftDataOptions o = options(cap, Bk);
    o.truncation = tr;
    return o;
  };

  SUBCASE("everything fits: both modes keep it whole") {
    for (const SftTruncation tr : {SftTruncation::Right, SftTruncation::Drop}) {
      const SftDataset d = read(line + "\n", with(full, tr));
      REQUIRE(d.examples.size() == 1);
      CHECK(d.examples[0].ids == e.ids);
      CHECK(d.examples[0].fill_end == full);
      CHECK(d.stats.truncated == 0);
    }
  }
  SUBCASE("only the fill is cut (C <= cap < full)") {
    const int cap = C + 1;
    const SftDataset r = read(line + "\n", with(cap, SftTruncation::Right));
    REQUIRE(r.examples.size() == 1);
    CHECK(r.examples[0].ids == e.ids);
    CHECK(r.examples[0].fill_end == cap);
    CHECK(r.stats.truncated == 1);
    CHECK(r.stats.fill_tokens == 1);
    const SftDataset dr = read(short_line + "\n" + line + "\n", with(cap, SftTruncation::Drop));
    REQUIRE(dr.examples.size() == 1);
    CHECK(dr.examples[0].ids == s.ids);
    REQUIRE(dr.skipped.size() == 1);
    CHECK(dr.skipped[0].line == 2);
    CHECK(contains(dr.skipped[0].message, "max_seq_len " + std::to_string(cap)));
    CHECK(contains(dr.skipped[0].message, "drop"));
    CHECK(dr.stats.truncated == 0);
  }
  SUBCASE("the response is cut (P < cap < C)") {
    const int cap = P + 2;
    const SftDataset r = read(line + "\n", with(cap, SftTruncation::Right));
    REQUIRE(r.examples.size() == 1);
    const Ids head(e.ids.begin(), e.ids.begin() + cap);
    CHECK(r.examples[0].ids == head);
    CHECK(r.examples[0].prompt_len == P);
    CHECK(r.examples[0].fill_end == cap);
    CHECK(r.examples[0].response_len() == 2);
    CHECK(r.stats.truncated == 1);
    CHECK(r.stats.response_tokens == 2);
    CHECK(r.stats.fill_tokens == 0);
    SftDataOptions o = with(cap, SftTruncation::Drop);
    o.fail_on_error = true;
    const std::string msg = config_error([&] { (void)read(line + "\n", o, "t.jsonl"); });
    CHECK(msg.rfind("t.jsonl:1: ", 0) == 0);
    CHECK(contains(msg, "drop"));
  }
  SUBCASE("one response token left (cap = P + 1)") {
    const SftDataset r = read(line + "\n", with(P + 1, SftTruncation::Right));
    REQUIRE(r.examples.size() == 1);
    CHECK(r.examples[0].content_len() == P + 1);
    CHECK(r.examples[0].fill_end == P + 1);
    CHECK(r.examples[0].canvas_len() == 1);
  }
  SUBCASE("the prompt alone fills max_seq_len: skipped even with Right") {
    for (const int cap : {P, P - 1}) {
      const SftDataset r = read(short_line + "\n" + line + "\n", with(cap, SftTruncation::Right));
      REQUIRE(r.examples.size() == 1);
      CHECK(r.examples[0].ids == s.ids);
      REQUIRE(r.skipped.size() == 1);
      CHECK(r.skipped[0].line == 2);
      CHECK(contains(r.skipped[0].message, "no response token"));
    }
  }
  SUBCASE("bad options") {
    CHECK(contains(config_error([&] { (void)read(line + "\n", with(1, SftTruncation::Right)); }), "max_seq_len"));
    CHECK(contains(config_error([&] { (void)read(line + "\n", options(1024, 0)); }), "canvas_length"));
  }
}

// ================================================================================================
// Micro-batch assembly
// ================================================================================================

namespace {

// Checks every field of a micro-batch against the layout of §2.2/§2.3, computed from the examples.
void check_layout(const SftDataset& d, const SftMicroBatch& mb, const std::vector<std::int64_t>& ex,
                  const std::vector<std::int64_t>& ks, const SftDataOptions& o) {
  const std::size_t B = ex.size();
  REQUIRE(mb.B == static_cast<int>(B));
  std::int64_t max_fill = 0, max_r = 1, sup = 0, pairs = 0;
  for (const std::int64_t i : ex) {
    const SftExample& e = d.examples[static_cast<std::size_t>(i)];
    max_fill = std::max<std::int64_t>(max_fill, e.fill_end);
    max_r = std::max<std::int64_t>(max_r, e.fill_end - e.prompt_len);
  }
  const std::int64_t S = std::min<std::int64_t>(ceil_div(max_fill, o.canvas_length) * o.canvas_length, o.max_seq_len);
  REQUIRE(mb.S == S);
  REQUIRE(mb.R == max_r);
  const std::size_t Su = static_cast<std::size_t>(S), R = static_cast<std::size_t>(max_r);
  REQUIRE(mb.input_ids.size() == B * Su);
  REQUIRE(mb.attention.size() == B * Su);
  REQUIRE(mb.ar_mask.size() == B * Su);
  REQUIRE(mb.canvas_target.size() == B * R);
  REQUIRE(mb.canvas_mask.size() == B * R);
  REQUIRE(mb.decoder_pos.size() == B * R);
  CHECK(mb.example == ex);
  CHECK(mb.sample_index == ks);
  for (std::size_t b = 0; b < B; ++b) {
    INFO("row " << b);
    const SftExample& e = d.examples[static_cast<std::size_t>(ex[b])];
    const std::int64_t P = e.prompt_len, C = static_cast<std::int64_t>(e.ids.size()), F = e.fill_end;
    CHECK(mb.prompt_len[b] == P);
    CHECK(mb.content_len[b] == C);
    CHECK(mb.seq_len[b] == F);
    CHECK(mb.canvas_len[b] == F - P);
    std::vector<std::int32_t> row(Su);
    for (std::size_t t = 0; t < Su; ++t) {
      const std::int64_t ti = static_cast<std::int64_t>(t);
      row[t] = ti < C ? e.ids[t] : ti < F ? o.eos_fill_id : o.pad_id;
      const std::uint8_t att = ti < F ? 1 : 0;
      const std::uint8_t next_att = ti + 1 < F ? 1 : 0;
      CHECK(mb.input_ids[b * Su + t] == row[t]);
      CHECK(mb.attention[b * Su + t] == att);
      CHECK(mb.ar_mask[b * Su + t] == (t + 1 < Su ? (att & next_att) : 0));
      pairs += t + 1 < Su ? (att & next_att) : 0;
    }
    for (std::size_t j = 0; j < R; ++j) {
      const std::int64_t abs = P + static_cast<std::int64_t>(j);
      const bool valid = static_cast<std::int64_t>(j) < F - P;
      CHECK(mb.canvas_mask[b * R + j] == (valid ? 1 : 0));
      CHECK(mb.canvas_target[b * R + j] == (valid ? row[static_cast<std::size_t>(abs)] : o.pad_id));
      CHECK(mb.decoder_pos[b * R + j] == std::min<std::int64_t>(abs, S - 1));
      sup += valid;
    }
  }
  CHECK(mb.supervised_tokens == sup);
  CHECK(mb.ar_pairs == pairs);
  CHECK(mb.supervised_tokens ==
        std::accumulate(mb.canvas_mask.begin(), mb.canvas_mask.end(), std::int64_t{0}));
  CHECK(mb.ar_pairs == std::accumulate(mb.ar_mask.begin(), mb.ar_mask.end(), std::int64_t{0}));
}

}  // namespace

TEST_CASE("assemble_micro_batch: pad layout, attention, ar_mask, canvas gather, decoder positions, counts") {
  const int Bk = 8, cap = 60;  // cap is not a multiple of Bk, so the S cap is exercised
  const std::vector<std::vector<Turn>> chats = {
      {{"user", words(16)}, {"assistant", "Ok."}},                     // 0: long prompt, one block
      {{"user", "Hi"}, {"assistant", words(24, 3)}},                   // 1: short prompt, several blocks
      {{"user", words(8, 5)}, {"assistant", words(9, 2)}},             // 2: medium
      {{"user", "Go on"}, {"assistant", words(60, 1)}},                // 3: truncated at cap
  };
  std::string text;
  for (const auto& c : chats) text += msgs_line(c) + "\n";
  const SftDataOptions o = options(cap, Bk);
  const SftDataset d = read(text, o);
  INFO("first skipped: " << (d.skipped.empty() ? std::string("none") : d.skipped[0].message));
  REQUIRE(d.examples.size() == 4);
  INFO("P: " << d.examples[0].prompt_len << " " << d.examples[1].prompt_len << " " << d.examples[2].prompt_len << " "
             << d.examples[3].prompt_len);
  REQUIRE(d.examples[3].fill_end == cap);
  REQUIRE(d.examples[0].prompt_len > d.examples[1].prompt_len + Bk);

  const std::vector<std::vector<std::int64_t>> batches = {{0, 1, 2}, {2, 0}, {3, 0}, {1}, {0}, {3, 2, 1, 0}, {1, 1}};
  bool clamped = false, capped = false;
  for (const auto& ex : batches) {
    std::vector<std::int64_t> ks;
    for (std::size_t i = 0; i < ex.size(); ++i) ks.push_back(static_cast<std::int64_t>(7 * i + 3));
    const SftMicroBatch mb = assemble_micro_batch(d, ex, ks, o);
    check_layout(d, mb, ex, ks, o);
    for (std::size_t b = 0; b < ex.size(); ++b)
      clamped |= mb.prompt_len[b] + mb.R > mb.S;  // some canvas pad position clamps to S-1
    std::int32_t mf = 0;
    for (const std::int64_t i : ex) mf = std::max(mf, d.examples[static_cast<std::size_t>(i)].fill_end);
    capped |= ceil_div(mf, Bk) * Bk > mb.S;
  }
  CHECK(clamped);
  CHECK(capped);

  // A row's content does not depend on its batch-mates (only the padding widths S and R do).
  const SftMicroBatch a = assemble_micro_batch(d, std::vector<std::int64_t>{2}, std::vector<std::int64_t>{0}, o);
  const SftMicroBatch b = assemble_micro_batch(d, std::vector<std::int64_t>{1, 2}, std::vector<std::int64_t>{0, 1}, o);
  const std::size_t R2 = static_cast<std::size_t>(d.examples[2].canvas_len());
  for (std::size_t j = 0; j < R2; ++j)
    CHECK(a.canvas_target[j] == b.canvas_target[static_cast<std::size_t>(b.R) + j]);

  CHECK_THROWS_AS(assemble_micro_batch(d, std::vector<std::int64_t>{}, std::vector<std::int64_t>{}, o), Error);
  CHECK_THROWS_AS(assemble_micro_batch(d, std::vector<std::int64_t>{0, 1}, std::vector<std::int64_t>{0}, o), Error);
  CHECK_THROWS_AS(assemble_micro_batch(d, std::vector<std::int64_t>{4}, std::vector<std::int64_t>{0}, o), Error);
  CHECK_THROWS_AS(assemble_micro_batch(d, std::vector<std::int64_t>{-1}, std::vector<std::int64_t>{0}, o), Error);
}

// ================================================================================================
// Cursor
// ================================================================================================

TEST_CASE("cursor: permutations are permutations, deterministic, and differ across epochs and seeds") {
  for (const std::int64_t n : {1, 2, 3, 7, 100, 1000}) {
    for (const std::uint64_t seed : {0ull, 42ull, 0xfedcba9876543210ull}) {
      for (const std::int64_t epoch : {0, 1, 17}) {
        const auto p = SftCursor::permutation(n, seed, epoch);
        REQUIRE(p.size() == static_cast<std::size_t>(n));
        std::vector<std::int64_t> sorted = p;
        std::sort(sorted.begin(), sorted.end());
        std::vector<std::int64_t> iota(static_cast<std::size_t>(n));
        std::iota(iota.begin(), iota.end(), 0);
        CHECK(sorted == iota);
        CHECK(SftCursor::permutation(n, seed, epoch) == p);
      }
    }
  }
  const auto p = SftCursor::permutation(100, 42, 0);
  CHECK(p != SftCursor::permutation(100, 42, 1));
  CHECK(p != SftCursor::permutation(100, 43, 0));
  std::vector<std::int64_t> iota(100);
  std::iota(iota.begin(), iota.end(), 0);
  CHECK(p != iota);

  // Fisher-Yates is unbiased: over 6000 seeds, each of the 6 orders of 3 items appears ~1000 times
  // (binomial, 5 sigma = 144). A Sattolo-style off-by-one would never produce the identity.
  std::map<std::vector<std::int64_t>, int> count;
  const int N = 6000;
  for (int s = 0; s < N; ++s) ++count[SftCursor::permutation(3, static_cast<std::uint64_t>(s), 0)];
  CHECK(count.size() == 6);
  for (const auto& [perm, c] : count) CHECK(within_binomial(c, N, 1.0 / 6.0));
  // The same over epochs of one seed.
  count.clear();
  for (int e = 0; e < N; ++e) ++count[SftCursor::permutation(3, 42, e)];
  CHECK(count.size() == 6);
  for (const auto& [perm, c] : count) CHECK(within_binomial(c, N, 1.0 / 6.0));
}

TEST_CASE("cursor: a step consumes G permutation positions, drop_last ends the epoch") {
  const std::int64_t n = 10, G = 3;
  SftCursor c(n, 7, G);
  CHECK(c.steps_per_epoch() == 3);
  for (std::int64_t epoch = 0; epoch < 3; ++epoch) {
    const auto p = SftCursor::permutation(n, 7, epoch);
    for (std::int64_t s = 0; s < 3; ++s) {
      const auto batch = c.next_global_batch();
      CHECK(c.epoch() == epoch);
      CHECK(c.position() == (s + 1) * G);
      CHECK(batch == std::vector<std::int64_t>(p.begin() + s * G, p.begin() + (s + 1) * G));
    }
    // position 9 of 10: the last example of the epoch's order (the tail) is never used.
  }
  SftCursor exact(6, 1, 3);  // no tail: the epoch ends exactly
  (void)exact.next_global_batch();
  (void)exact.next_global_batch();
  CHECK(exact.epoch() == 0);
  const auto q1 = SftCursor::permutation(6, 1, 1);
  CHECK(exact.next_global_batch() == std::vector<std::int64_t>(q1.begin(), q1.begin() + 3));
  CHECK(exact.epoch() == 1);

  SftCursor whole(4, 9, 4);  // G == n
  CHECK(whole.next_global_batch() == SftCursor::permutation(4, 9, 0));
  CHECK(whole.next_global_batch() == SftCursor::permutation(4, 9, 1));

  CHECK_THROWS_AS(SftCursor(2, 1, 3), ConfigError);
  CHECK_THROWS_AS(SftCursor(5, 1, 0), ConfigError);
}

TEST_CASE("cursor: state()/restore() resumes exactly") {
  const std::uint64_t seed = 0xfedcba9876543210ull;  // above INT64_MAX: must survive the JSON round trip
  const std::int64_t n = 11, G = 3;
  for (const int done : {0, 1, 2, 3, 4, 7}) {
    INFO("steps before the save: " << done);
    SftCursor a(n, seed, G, 0x1234);
    for (int s = 0; s < done; ++s) (void)a.next_global_batch();
    const json st = json::parse(a.state().dump());
    CHECK(st["epoch"] == a.epoch());
    CHECK(st["position"] == a.position());
    CHECK(st["num_examples"] == n);
    CHECK(st["fingerprint"] == "0000000000001234");
    SftCursor b(n, seed, G, 0x1234);
    b.restore(st);
    CHECK(b.epoch() == a.epoch());
    CHECK(b.position() == a.position());
    for (int s = 0; s < 8; ++s) CHECK(b.next_global_batch() == a.next_global_batch());
  }
  // A different global batch continues from the saved position.
  SftCursor a(10, 5, 3);
  (void)a.next_global_batch();
  (void)a.next_global_batch();
  SftCursor b(10, 5, 2);
  b.restore(a.state());
  const auto p0 = SftCursor::permutation(10, 5, 0), p1 = SftCursor::permutation(10, 5, 1);
  CHECK(b.next_global_batch() == std::vector<std::int64_t>(p0.begin() + 6, p0.begin() + 8));
  CHECK(b.next_global_batch() == std::vector<std::int64_t>(p0.begin() + 8, p0.begin() + 10));
  CHECK(b.next_global_batch() == std::vector<std::int64_t>(p1.begin(), p1.begin() + 2));
  CHECK(b.epoch() == 1);
}

TEST_CASE("cursor: restore refuses another seed, example count or dataset, and malformed states") {
  SftCursor a(10, 42, 2, 0xabc);
  (void)a.next_global_batch();
  const json st = a.state();
  {
    SftCursor b(10, 43, 2, 0xabc);
    CHECK(contains(config_error([&] { b.restore(st); }), "seed"));
    CHECK(b.position() == 0);
  }
  {
    SftCursor b(11, 42, 2, 0xabc);
    CHECK(contains(config_error([&] { b.restore(st); }), "examples"));
  }
  {
    SftCursor b(10, 42, 2, 0xabd);
    CHECK(contains(config_error([&] { b.restore(st); }), "fingerprint"));
    CHECK(b.position() == 0);
  }
  const auto refused = [&](json bad) {
    SftCursor b(10, 42, 2, 0xabc);
    INFO(bad.dump());
    (void)config_error([&] { b.restore(bad); });
  };
  json s = st;
  s.erase("epoch");
  refused(s);
  s = st;
  s.erase("position");
  refused(s);
  s = st;
  s.erase("num_examples");
  refused(s);
  s = st;
  s["position"] = 11;
  refused(s);
  s = st;
  s["position"] = -1;
  refused(s);
  s = st;
  s["epoch"] = -1;
  refused(s);
  s = st;
  s["seed"] = -42;
  refused(s);
  s = st;
  s["seed"] = "42";
  refused(s);
  s = st;
  s["position"] = 1.5;
  refused(s);
  refused(json::array());
  refused(json(3));
}

// A state without "seed" must be a ConfigError like every other missing field (it once read a missing
// key through json's const operator[], undefined behaviour).
TEST_CASE("cursor: a state without a seed is a ConfigError") {
  SftCursor a(10, 42, 2);
  json st = a.state();
  st.erase("seed");
  SftCursor b(10, 42, 2);
  CHECK(contains(config_error([&] { b.restore(st); }), "seed"));
}

TEST_CASE("SftBatchShape::sample_indices covers 0..G-1 once; (example, k) pairs do not depend on the layout") {
  // Every way to split G = 12 into micro_batch * accumulation * dp.
  std::vector<SftBatchShape> shapes;
  for (int B = 1; B <= 12; ++B)
    for (int acc = 1; acc <= 12; ++acc)
      for (int dp = 1; dp <= 12; ++dp)
        if (B * acc * dp == 12) shapes.push_back({B, acc, dp});
  REQUIRE(shapes.size() == 18);

  for (const SftBatchShape& sh : shapes) {
    INFO("B=" << sh.micro_batch << " acc=" << sh.accumulation << " dp=" << sh.dp);
    CHECK(sh.global_batch() == 12);
    std::vector<int> seen(12, 0);
    for (int r = 0; r < sh.dp; ++r)
      for (int m = 0; m < sh.accumulation; ++m) {
        const auto ks = sh.sample_indices(r, m);
        REQUIRE(ks.size() == static_cast<std::size_t>(sh.micro_batch));
        for (const std::int64_t k : ks) {
          REQUIRE(k >= 0);
          REQUIRE(k < 12);
          ++seen[static_cast<std::size_t>(k)];
          CHECK(k % sh.dp == r);  // NeMo: rank r owns positions r, r+dp, r+2dp, ...
        }
      }
    CHECK(seen == std::vector<int>(12, 1));
  }
  // With micro_batch 1, rank r's micro-batch m is sample m*dp + r (NeMo's g = r + (m*lbs + j)*dp).
  const SftBatchShape one{1, 3, 4};
  CHECK(one.sample_indices(1, 2) == std::vector<std::int64_t>{9});

  // The whole pipeline per step: cursor -> micro-batches -> noise, keyed by (step, k). Every layout must
  // produce the same (example, clean row, noised canvas, loss mask, t, coin, block) for every k.
  std::string text;
  for (int i = 0; i < 26; ++i)
    text += msgs_line({{"user", "Question " + words(1 + i % 7, i)}, {"assistant", words(1 + (i * 5) % 17, 2 * i)}}) + "\n";
  const SftDataOptions o = options(40, 8);
  const SftDataset d = read(text, o);
  REQUIRE(d.examples.size() == 26);
  NoiseOptions no;
  no.seed = 99;
  no.vocab_size = tok().vocab_size();
  no.canvas_length = 8;

  using Row = std::tuple<std::int64_t, Ids, Ids, std::vector<std::uint8_t>, std::vector<std::uint8_t>, float, std::uint8_t,
                         std::int32_t, Ids>;
  std::map<std::pair<std::int64_t, std::int64_t>, Row> reference;
  for (std::size_t si = 0; si < shapes.size(); ++si) {
    const SftBatchShape& sh = shapes[si];
    INFO("B=" << sh.micro_batch << " acc=" << sh.accumulation << " dp=" << sh.dp);
    SftCursor cursor(static_cast<std::int64_t>(d.examples.size()), 5, sh.global_batch(), d.fingerprint);
    std::map<std::pair<std::int64_t, std::int64_t>, Row> got;
    for (std::int64_t step = 0; step < 5; ++step) {  // crosses two epoch boundaries (2 steps per epoch)
      const auto batch = cursor.next_global_batch();
      for (int r = 0; r < sh.dp; ++r)
        for (int m = 0; m < sh.accumulation; ++m) {
          const auto ks = sh.sample_indices(r, m);
          std::vector<std::int64_t> ex;
          for (const std::int64_t k : ks) ex.push_back(batch[static_cast<std::size_t>(k)]);
          const SftMicroBatch mb = assemble_micro_batch(d, ex, ks, o);
          const NoisedCanvas nc =
              noise_canvas({mb.B, mb.R, mb.canvas_target, mb.canvas_len, mb.sample_index}, step, no);
          for (std::size_t b = 0; b < ex.size(); ++b) {
            const std::size_t S = static_cast<std::size_t>(mb.S), R = static_cast<std::size_t>(mb.R);
            const std::size_t Rb = static_cast<std::size_t>(mb.canvas_len[b]), F = static_cast<std::size_t>(mb.seq_len[b]);
            const auto cut = [&](const auto& v, std::size_t stride, std::size_t len) {
              return std::vector<typename std::decay_t<decltype(v)>::value_type>(v.begin() + static_cast<std::ptrdiff_t>(b * stride),
                                                                                v.begin() + static_cast<std::ptrdiff_t>(b * stride + len));
            };
            const bool fresh = got.emplace(std::pair{step, ks[b]},
                                           Row{ex[b], cut(mb.input_ids, S, F), cut(nc.canvas_ids, R, Rb),
                                               cut(nc.noised, R, Rb), cut(nc.loss_mask, R, Rb), nc.t[b],
                                               nc.self_cond[b], nc.block[b], cut(mb.decoder_pos, R, Rb)})
                                   .second;
            CHECK(fresh);
          }
        }
    }
    CHECK(got.size() == 5u * 12u);
    if (si == 0)
      reference = got;
    else
      CHECK(got == reference);
  }
}

// ================================================================================================
// Noise
// ================================================================================================

namespace {

struct Canvas {
  int B = 0, R = 0;
  Ids clean;
  std::vector<std::int32_t> len;
  std::vector<std::int64_t> k;
  NoiseInput input() const { return {B, R, clean, len, k}; }
};

// Rows given by (R_b, k, first clean id); padding beyond R_b holds `pad`.
Canvas make_canvas(int R, const std::vector<std::tuple<int, std::int64_t, std::int32_t>>& rows, std::int32_t pad = 0,
                   int V = 2048) {
  Canvas c;
  c.B = static_cast<int>(rows.size());
  c.R = R;
  for (const auto& [len, k, first] : rows) {
    c.len.push_back(len);
    c.k.push_back(k);
    for (int j = 0; j < R; ++j) c.clean.push_back(j < len ? (first + 37 * j) % V : pad);
  }
  return c;
}

NoiseOptions noise_options(int Bk = 8, int V = 2048, std::uint64_t seed = 1234) {
  NoiseOptions o;
  o.seed = seed;
  o.vocab_size = V;
  o.canvas_length = Bk;
  return o;
}

// One row of a NoisedCanvas, restricted to its valid positions.
struct RowResult {
  Ids canvas, target;
  std::vector<std::uint8_t> noised, loss;
  float t;
  std::uint8_t coin;
  std::int32_t block;
  bool operator==(const RowResult&) const = default;
};

RowResult row_of(const NoisedCanvas& n, std::size_t b, int len) {
  const std::size_t R = static_cast<std::size_t>(n.R), L = static_cast<std::size_t>(len);
  const auto at = [&](const auto& v) {
    return std::vector<typename std::decay_t<decltype(v)>::value_type>(v.begin() + static_cast<std::ptrdiff_t>(b * R),
                                                                      v.begin() + static_cast<std::ptrdiff_t>(b * R + L));
  };
  return {at(n.canvas_ids), at(n.target_ids), at(n.noised), at(n.loss_mask), n.t[b], n.self_cond[b], n.block[b]};
}

}  // namespace

TEST_CASE("noise: per-row invariants (t range, untouched padding, one loss block, counts)") {
  const NoiseOptions o = noise_options(8, 2048);
  const Canvas c = make_canvas(40, {{40, 5, 11}, {17, 0, 900}, {8, 11, 3}, {1, 3, 2047}, {9, 1000000, 5}}, 0);
  std::vector<std::set<int>> blocks_seen(static_cast<std::size_t>(c.B));
  for (std::int64_t step = 0; step < 200; ++step) {
    const NoisedCanvas n = noise_canvas(c.input(), step, o);
    REQUIRE(n.B == c.B);
    REQUIRE(n.R == c.R);
    REQUIRE(n.canvas_ids.size() == c.clean.size());
    CHECK(n.target_ids == c.clean);
    std::int64_t diff = 0, noised = 0;
    for (std::size_t b = 0; b < static_cast<std::size_t>(c.B); ++b) {
      const int len = c.len[b];
      const double t = n.t[b];
      CHECK(t >= static_cast<float>(o.eps));
      CHECK(t <= 1.0);
      CHECK(n.t[b] == static_cast<float>(noise_level(o, step, c.k[b])));
      CHECK(n.self_cond[b] == (self_cond_coin(o, step, c.k[b]) ? 1 : 0));
      const int nblocks = static_cast<int>(ceil_div(len, o.canvas_length));
      CHECK(n.block[b] >= 0);
      CHECK(n.block[b] < nblocks);
      CHECK(n.block[b] == choose_block(o, step, c.k[b], len));
      blocks_seen[b].insert(n.block[b]);
      int in_block = 0;
      for (int j = 0; j < c.R; ++j) {
        const std::size_t at = b * static_cast<std::size_t>(c.R) + static_cast<std::size_t>(j);
        if (j >= len) {  // row padding: never noised, never supervised
          CHECK(n.canvas_ids[at] == c.clean[at]);
          CHECK(n.noised[at] == 0);
          CHECK(n.loss_mask[at] == 0);
          continue;
        }
        if (n.canvas_ids[at] != c.clean[at]) CHECK(n.noised[at] == 1);
        if (n.noised[at]) {
          CHECK(n.canvas_ids[at] >= 0);
          CHECK(n.canvas_ids[at] < o.vocab_size);
        }
        CHECK(n.loss_mask[at] == (j / o.canvas_length == n.block[b] ? 1 : 0));
        in_block += n.loss_mask[at];
      }
      CHECK(in_block == std::min(o.canvas_length, len - n.block[b] * o.canvas_length));
      CHECK(in_block > 0);
    }
    for (std::size_t i = 0; i < c.clean.size(); ++i) {
      diff += n.loss_mask[i];
      noised += n.noised[i];
    }
    CHECK(n.diffusion_tokens == diff);
    CHECK(n.noised_tokens == noised);
  }
  // Over 200 steps every block of each row is chosen at some point (P(miss) < 5*(4/5)^200).
  CHECK(blocks_seen[0].size() == 5);
  CHECK(blocks_seen[1].size() == 3);
  CHECK(blocks_seen[2].size() == 1);
  CHECK(blocks_seen[3].size() == 1);
  CHECK(blocks_seen[4].size() == 2);

  // The number of blocks is ceil(R_b / Bk): a block boundary exactly at R_b adds no block.
  for (std::int64_t k = 0; k < 300; ++k) {
    CHECK(choose_block(o, 0, k, 8) == 0);
    CHECK(choose_block(o, 0, k, 1) == 0);
    CHECK(choose_block(o, 0, k, 16) < 2);
    CHECK(choose_block(o, 0, k, 17) < 3);
  }

  // Malformed input.
  Canvas bad = make_canvas(4, {{4, 0, 1}});
  bad.len[0] = 5;
  CHECK_THROWS_AS(noise_canvas(bad.input(), 0, o), Error);
  bad.len[0] = 0;
  CHECK_THROWS_AS(noise_canvas(bad.input(), 0, o), Error);
  bad.len[0] = 4;
  bad.k.push_back(1);
  CHECK_THROWS_AS(noise_canvas(bad.input(), 0, o), Error);
  CHECK_THROWS_AS(noise_canvas(NoiseInput{}, 0, o), Error);
}

TEST_CASE("noise: a row depends only on (clean canvas, R_b, k, step, seed), not on its batch, place or width R") {
  const NoiseOptions o = noise_options(8, 2048);
  const std::int64_t step = 31;
  // Rows A (k=3, R_b=20), X (k=8, R_b=33), Y (k=1, R_b=5).
  const Canvas one = make_canvas(33, {{20, 3, 100}, {33, 8, 200}, {5, 1, 300}}, 0);
  const NoisedCanvas n1 = noise_canvas(one.input(), step, o);
  // Y and A in another order, a wider R and junk in the padding.
  const Canvas two = make_canvas(64, {{5, 1, 300}, {20, 3, 100}}, 777);
  const NoisedCanvas n2 = noise_canvas(two.input(), step, o);
  // A alone, R = R_b.
  const Canvas alone = make_canvas(20, {{20, 3, 100}});
  const NoisedCanvas n3 = noise_canvas(alone.input(), step, o);

  CHECK(row_of(n1, 0, 20) == row_of(n2, 1, 20));
  CHECK(row_of(n1, 0, 20) == row_of(n3, 0, 20));
  CHECK(row_of(n1, 2, 5) == row_of(n2, 0, 5));
  // The padding of the wide batch is left as it was.
  for (std::size_t b = 0; b < 2; ++b)
    for (int j = two.len[b]; j < two.R; ++j) {
      const std::size_t at = b * 64 + static_cast<std::size_t>(j);
      CHECK(n2.canvas_ids[at] == 777);
      CHECK(n2.noised[at] == 0);
      CHECK(n2.loss_mask[at] == 0);
    }
  // Deterministic.
  const NoisedCanvas again = noise_canvas(one.input(), step, o);
  CHECK(again.canvas_ids == n1.canvas_ids);
  CHECK(again.noised == n1.noised);
  CHECK(again.t == n1.t);

  // Which positions are noised and their replacements do not depend on the clean ids.
  const Canvas other = make_canvas(33, {{20, 3, 1500}, {33, 8, 7}, {5, 1, 42}}, 0);
  const NoisedCanvas n4 = noise_canvas(other.input(), step, o);
  CHECK(n4.noised == n1.noised);
  CHECK(n4.t == n1.t);
  CHECK(n4.block == n1.block);
  CHECK(n4.self_cond == n1.self_cond);
  for (std::size_t i = 0; i < n1.noised.size(); ++i)
    if (n1.noised[i]) CHECK(n4.canvas_ids[i] == n1.canvas_ids[i]);
  CHECK(n4.target_ids == other.clean);

  // The row's length matters only through which positions exist: a longer R_b keeps the draws of the
  // shared prefix (the mask and the tokens are keyed per position j).
  const Canvas longer = make_canvas(33, {{33, 3, 100}});
  const NoisedCanvas n5 = noise_canvas(longer.input(), step, o);
  CHECK(n5.t[0] == n1.t[0]);
  for (std::size_t j = 0; j < 20; ++j) {
    CHECK(n5.noised[j] == n1.noised[j]);
    CHECK(n5.canvas_ids[j] == n1.canvas_ids[j]);
  }

  // A different seed gives different draws.
  NoiseOptions o2 = o;
  o2.seed = 1235;
  const NoisedCanvas n6 = noise_canvas(one.input(), step, o2);
  CHECK(n6.t != n1.t);
}

TEST_CASE("noise: a different step or sample index draws differently") {
  const NoiseOptions o = noise_options(8, 2048);
  const int K = 32, L = 64;
  std::vector<std::tuple<int, std::int64_t, std::int32_t>> rows;
  for (int k = 0; k < K; ++k) rows.emplace_back(L, k, 500);  // identical clean rows, different k
  const Canvas c = make_canvas(L, rows);
  const NoisedCanvas s0 = noise_canvas(c.input(), 0, o), s1 = noise_canvas(c.input(), 1, o);
  std::set<float> ts(s0.t.begin(), s0.t.end());
  CHECK(ts.size() == static_cast<std::size_t>(K));  // every sample index has its own level
  int rows_differ_k = 0, rows_differ_step = 0, both_noised = 0, same_token = 0;
  for (std::size_t b = 0; b < static_cast<std::size_t>(K); ++b) {
    CHECK(s0.t[b] != s1.t[b]);
    const RowResult a = row_of(s0, b, L), a1 = row_of(s1, b, L);
    const RowResult next = row_of(s0, (b + 1) % static_cast<std::size_t>(K), L);
    rows_differ_step += a.noised != a1.noised;
    rows_differ_k += a.noised != next.noised;
    for (std::size_t j = 0; j < static_cast<std::size_t>(L); ++j)
      if (a.noised[j] && a1.noised[j]) {
        ++both_noised;
        same_token += a.canvas[j] == a1.canvas[j];
      }
  }
  // Identical masks need both levels tiny (or both ~1); with 32 rows a handful at most.
  CHECK(rows_differ_step >= K - 4);
  CHECK(rows_differ_k >= K - 4);
  REQUIRE(both_noised > 100);
  CHECK(same_token <= both_noised / 100 + 5);  // 1/2048 chance each
  // The per-example draws as functions.
  int coins_differ = 0, blocks_differ = 0;
  for (std::int64_t k = 0; k < 200; ++k) {
    CHECK(noise_level(o, 5, k) != noise_level(o, 6, k));
    CHECK(noise_level(o, 5, k) != noise_level(o, 5, k + 1));
    coins_differ += self_cond_coin(o, 5, k) != self_cond_coin(o, 6, k);
    blocks_differ += choose_block(o, 5, k, 80) != choose_block(o, 6, k, 80);
  }
  CHECK(within_binomial(coins_differ, 200, 0.5));  // independent fair coins differ half of the time
  CHECK(within_binomial(blocks_differ, 200, 0.9)); // 10 blocks: equal with probability 1/10
}

TEST_CASE("noise: statistics of t, the noised fraction, the replacements, the coin and the block") {
  SUBCASE("t ~ U(eps, 1)") {
    const NoiseOptions o = noise_options();
    const int N = 20000;
    double sum = 0;
    int below_mid = 0;
    double lo = 2, hi = -1;
    for (int i = 0; i < N; ++i) {
      const double t = noise_level(o, i / 100, i % 100);
      CHECK(t >= o.eps);
      CHECK(t <= 1.0);
      lo = std::min(lo, t);
      hi = std::max(hi, t);
      sum += t;
      below_mid += t < 0.5;
    }
    const double sd = (1.0 - o.eps) / std::sqrt(12.0 * N);
    CHECK(std::abs(sum / N - (1.0 + o.eps) / 2.0) <= 5 * sd);
    CHECK(within_binomial(below_mid, N, (0.5 - o.eps) / (1.0 - o.eps)));
    CHECK(lo < 0.01);  // both ends are reached
    CHECK(hi > 0.99);
    NoiseOptions big = o;
    big.eps = 0.25;
    for (int i = 0; i < 2000; ++i) CHECK(noise_level(big, 0, i) >= 0.25);
  }

  SUBCASE("the noised fraction of a row is ~t; replacements are uniform over [0, V)") {
    const int V = 2048, L = 2048, B = 16;
    const NoiseOptions o = noise_options(256, V);
    std::int64_t total = 0;
    double expect = 0, var = 0;
    std::vector<std::int64_t> hist(16, 0);
    std::int32_t lo = V, hi = -1;
    for (std::int64_t step = 0; step < 8; ++step) {
      std::vector<std::tuple<int, std::int64_t, std::int32_t>> rows;
      for (int b = 0; b < B; ++b) rows.emplace_back(L, b, 0);
      const Canvas c = make_canvas(L, rows, 0, V);
      const NoisedCanvas n = noise_canvas(c.input(), step, o);
      for (std::size_t b = 0; b < static_cast<std::size_t>(B); ++b) {
        const double t = n.t[b];
        std::int64_t cnt = 0;
        for (std::size_t j = 0; j < static_cast<std::size_t>(L); ++j) {
          const std::size_t at = b * L + j;
          if (!n.noised[at]) continue;
          ++cnt;
          const std::int32_t r = n.canvas_ids[at];
          lo = std::min(lo, r);
          hi = std::max(hi, r);
          ++hist[static_cast<std::size_t>(r) * 16 / V];
        }
        INFO("step " << step << " row " << b << " t " << t);
        CHECK(within_binomial(static_cast<double>(cnt), L, t));
        total += cnt;
        expect += L * t;
        var += L * t * (1 - t);
      }
    }
    CHECK(std::abs(static_cast<double>(total) - expect) <= 5 * std::sqrt(var));
    // The full vocabulary, special tokens (low ids) included.
    CHECK(lo >= 0);
    CHECK(hi < V);
    CHECK(lo < 16);
    CHECK(hi >= V - 16);
    for (const std::int64_t h : hist) CHECK(within_binomial(static_cast<double>(h), static_cast<double>(total), 1.0 / 16));
  }

  SUBCASE("a replacement equal to the clean token still counts as noised (V = 2)") {
    const int V = 2, L = 1024;
    const NoiseOptions o = noise_options(256, V);
    std::vector<std::tuple<int, std::int64_t, std::int32_t>> rows;
    for (int b = 0; b < 32; ++b) rows.emplace_back(L, b, b % 2);
    const Canvas c = make_canvas(L, rows, 0, V);
    const NoisedCanvas n = noise_canvas(c.input(), 3, o);
    std::int64_t noised = 0, same = 0, changed = 0, ones = 0;
    double expect = 0, var = 0;
    for (std::size_t i = 0; i < c.clean.size(); ++i) {
      noised += n.noised[i];
      same += n.noised[i] && n.canvas_ids[i] == c.clean[i];
      changed += n.canvas_ids[i] != c.clean[i];
      ones += n.noised[i] && n.canvas_ids[i] == 1;
    }
    // Both values of the vocabulary are drawn, evenly (the top id V-1 included).
    CHECK(within_binomial(static_cast<double>(ones), static_cast<double>(noised), 0.5));
    for (std::size_t b = 0; b < 32; ++b) {
      expect += L * static_cast<double>(n.t[b]);
      var += L * n.t[b] * (1.0 - n.t[b]);
    }
    CHECK(n.noised_tokens == noised);
    CHECK(std::abs(static_cast<double>(noised) - expect) <= 5 * std::sqrt(var) + 1);
    CHECK(within_binomial(static_cast<double>(same), static_cast<double>(noised), 0.5));
    CHECK(changed == noised - same);
  }

  SUBCASE("self-conditioning coin rate ~ p") {
    for (const double p : {0.5, 0.2, 0.9}) {
      NoiseOptions o = noise_options();
      o.self_cond_p = p;
      const int N = 20000;
      int on = 0;
      for (int i = 0; i < N; ++i) on += self_cond_coin(o, i % 50, i / 50);
      INFO("p = " << p);
      CHECK(within_binomial(on, N, p));
    }
    NoiseOptions never = noise_options(), always = noise_options();
    never.self_cond_p = 0.0;
    always.self_cond_p = 1.0;
    for (int i = 0; i < 1000; ++i) {
      CHECK_FALSE(self_cond_coin(never, i, i));
      CHECK(self_cond_coin(always, i, i));
    }
    // noise_canvas uses the same coin.
    NoiseOptions o = noise_options();
    std::vector<std::tuple<int, std::int64_t, std::int32_t>> rows;
    for (int b = 0; b < 400; ++b) rows.emplace_back(1, b, 0);
    const NoisedCanvas n = noise_canvas(make_canvas(1, rows).input(), 2, o);
    const int on = std::accumulate(n.self_cond.begin(), n.self_cond.end(), 0);
    CHECK(within_binomial(on, 400, 0.5));
  }

  SUBCASE("the block is uniform over the example's blocks") {
    const NoiseOptions o = noise_options(8);
    for (const int len : {24, 17, 80}) {
      const int nb = static_cast<int>(ceil_div(len, 8));
      std::vector<int> hist(static_cast<std::size_t>(nb), 0);
      const int N = 6000;
      for (int i = 0; i < N; ++i) {
        const int blk = choose_block(o, i % 60, i / 60, len);
        REQUIRE(blk >= 0);
        REQUIRE(blk < nb);
        ++hist[static_cast<std::size_t>(blk)];
      }
      INFO("R_b = " << len);
      for (const int h : hist) CHECK(within_binomial(h, N, 1.0 / nb));
    }
  }
}

TEST_CASE("resolve_eos_fill_id: the model directory's eos_token, <eos> by default") {
  namespace fs = std::filesystem;
  CHECK(resolve_eos_fill_id((fs::path(DGEMMA_FIXTURES) / "tokenizer").string(), tok()) == id_of("<eos>"));
  const fs::path dir = fs::temp_directory_path() / fs::path("dgemma_test_eos_" + std::to_string(::getpid()));
  fs::create_directories(dir);
  CHECK(resolve_eos_fill_id(dir.string(), tok()) == id_of("<eos>"));  // no tokenizer_config.json
  std::ofstream(dir / "tokenizer_config.json") << R"({"eos_token": {"content": "<turn|>"}})";
  CHECK(resolve_eos_fill_id(dir.string(), tok()) == id_of("<turn|>"));
  std::ofstream(dir / "tokenizer_config.json") << R"({"eos_token": "<bos>"})";
  CHECK(resolve_eos_fill_id(dir.string(), tok()) == id_of("<bos>"));
  std::ofstream(dir / "tokenizer_config.json") << R"({"eos_token": 5})";
  CHECK_THROWS_AS(resolve_eos_fill_id(dir.string(), tok()), ConfigError);
  std::ofstream(dir / "tokenizer_config.json") << R"({"eos_token": "<no such token>"})";
  CHECK_THROWS_AS(resolve_eos_fill_id(dir.string(), tok()), ConfigError);
  fs::remove_all(dir);
}
