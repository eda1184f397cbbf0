// SFT data: JSONL reading and validation, the layout-independent cursor, and micro-batch assembly in
// the response-window layout. See sft_data.h for the format, the layout and the decisions.
#include "io/sft_data.h"

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <limits>
#include <sstream>

#include "io/strict_json.h"
#include "layers/error.h"
#include "layers/random.h"

namespace dg {

using nlohmann::json;

namespace {

constexpr const char* kWhat = "@";  // parse_json_strict's name for the line; stripped from its messages

std::string strip_what(const std::string& message) {
  const std::string prefix = std::string(kWhat) + ": ";
  return message.rfind(prefix, 0) == 0 ? message.substr(prefix.size()) : message;
}

std::string text_field(const json& j, const char* key, const char* where) {
  const json& v = j.at(key);
  if (!v.is_string()) fail_config("{}'{}' must be a string (text only)", where, key);
  return v.get<std::string>();
}

std::int32_t round_up(std::int64_t x, std::int64_t m) { return static_cast<std::int32_t>((x + m - 1) / m * m); }

std::uint64_t hash_combine(std::uint64_t h, std::uint64_t v) { return rng::mix(h ^ v); }

}  // namespace

std::vector<ChatMessage> parse_sft_line(const std::string& line) {
  json j;
  try {
    j = parse_json_strict(line, kWhat);
  } catch (const ConfigError& e) {
    fail_config("{}", strip_what(e.what()));
  }
  if (!j.is_object()) fail_config("a line must be a JSON object");
  std::vector<ChatMessage> out;
  if (j.contains("messages")) {
    const json& m = j["messages"];
    if (!m.is_array() || m.empty()) fail_config("'messages' must be a non-empty array");
    for (std::size_t i = 0; i < m.size(); ++i) {
      const json& x = m[i];
      const std::string where = fmt::format("message {}: ", i);
      if (!x.is_object()) fail_config("{}must be an object with 'role' and 'content'", where);
      if (!x.contains("role")) fail_config("{}no 'role'", where);
      if (!x.contains("content")) fail_config("{}no 'content'", where);
      ChatMessage msg{text_field(x, "role", where.c_str()), text_field(x, "content", where.c_str())};
      if (x.contains("weight")) {
        const json& w = x["weight"];
        if (!w.is_number_integer() || (w.get<std::int64_t>() != 0 && w.get<std::int64_t>() != 1))
          fail_config("{}'weight' must be 0 or 1", where);
        const bool last = i + 1 == m.size();
        if (last && w.get<std::int64_t>() == 0)
          fail_config("{}the last message has weight 0: the recipe supervises exactly the last assistant turn", where);
        if (!last && w.get<std::int64_t>() == 1)
          fail_config(
              "{}weight 1 on an earlier message: only the last assistant turn is supervised (mask_history), "
              "multi-turn supervision is not supported",
              where);
      }
      out.push_back(std::move(msg));
    }
  } else if (j.contains("prompt")) {
    const char* answer = j.contains("response") ? "response" : j.contains("completion") ? "completion" : nullptr;
    if (!answer) fail_config("a 'prompt' line needs a 'response' or 'completion'");
    out.push_back({"user", text_field(j, "prompt", "")});
    out.push_back({"assistant", text_field(j, answer, "")});
  } else {
    fail_config("needs 'messages' (or 'prompt' with 'response'/'completion')");
  }
  return out;
}

namespace {

// One rendered conversation to an example (the reason is thrown as a ConfigError).
SftExample make_example(const Tokenizer& tok, const std::vector<ChatMessage>& messages, std::int32_t turn_end,
                        const SftDataOptions& o, bool* truncated) {
  SftTokens t = render_chat_sft(tok, messages, o.chat);
  const std::size_t C = t.ids.size(), P = t.first_supervised;
  DG_CHECK(P < C, "render_chat_sft gave no supervised token");
  for (std::size_t i = 0; i < C; ++i)  // the supervised run is the suffix [P, C)
    DG_CHECK(t.loss_mask[i] == (i >= P ? 1 : 0), "supervised tokens are not a suffix");
  // An empty answer leaves only its `<turn|>\n` supervised (no token straddles the empty answer).
  if (t.ids[P] == turn_end) fail_config("empty response: the last assistant message is empty after trimming");
  const std::int64_t Bk = o.canvas_length, cap = o.max_seq_len;
  const std::int64_t full_fill = static_cast<std::int64_t>(P) + round_up(static_cast<std::int64_t>(C - P), Bk);
  *truncated = full_fill > cap;
  if (*truncated && o.truncation == SftTruncation::Drop)
    fail_config("{} tokens with the EOS fill (prompt {}, response {}), over max_seq_len {} (truncation=drop)",
                full_fill, P, C - P, cap);
  if (static_cast<std::int64_t>(P) >= cap)
    fail_config("the prompt is {} tokens: truncation at max_seq_len {} leaves no response token", P, cap);
  SftExample e;
  e.ids = std::move(t.ids);
  if (static_cast<std::int64_t>(e.ids.size()) > cap) e.ids.resize(static_cast<std::size_t>(cap));
  e.prompt_len = static_cast<std::int32_t>(P);
  e.fill_end = static_cast<std::int32_t>(std::min(full_fill, cap));
  return e;
}

}  // namespace

SftDataset read_sft_dataset(std::istream& in, const std::string& what, const Tokenizer& tokenizer,
                            const SftDataOptions& o) {
  if (o.canvas_length < 1) fail_config("canvas_length must be positive, got {}", o.canvas_length);
  if (o.max_seq_len < 2) fail_config("max_seq_len must be at least 2, got {}", o.max_seq_len);
  const std::int32_t turn_end = tokenizer.require_id("<turn|>");
  SftDataset d;
  d.path = what;
  SftDataStats& s = d.stats;
  s.response_min = std::numeric_limits<std::int64_t>::max();
  std::uint64_t fp = rng::mix(0x5f7d47a1u);
  std::string text;
  for (std::int64_t line = 1; std::getline(in, text); ++line) {
    if (text.find_first_not_of(" \t\r") == std::string::npos) continue;
    ++s.lines;
    SftExample e;
    bool truncated = false;
    try {
      e = make_example(tokenizer, parse_sft_line(text), turn_end, o, &truncated);
    } catch (const ConfigError& err) {
      if (o.fail_on_error) fail_config("{}:{}: {}", what, line, err.what());
      d.skipped.push_back({line, err.what()});
      ++s.skipped;
      continue;
    }
    e.line = line;
    ++s.kept;
    s.truncated += truncated;
    s.prompt_tokens += e.prompt_len;
    s.response_tokens += e.response_len();
    s.fill_tokens += e.fill_end - e.content_len();
    s.response_min = std::min<std::int64_t>(s.response_min, e.response_len());
    s.response_max = std::max<std::int64_t>(s.response_max, e.response_len());
    s.canvas_blocks += (e.canvas_len() + o.canvas_length - 1) / o.canvas_length;
    fp = hash_combine(fp, static_cast<std::uint64_t>(e.prompt_len));
    fp = hash_combine(fp, e.ids.size());
    for (const std::int32_t id : e.ids) {
      s.max_token_id = std::max(s.max_token_id, id);
      fp = hash_combine(fp, static_cast<std::uint32_t>(id));
    }
    d.examples.push_back(std::move(e));
  }
  if (in.bad()) fail_config("{}: read error", what);
  if (s.kept == 0) s.response_min = 0;
  d.fingerprint = fp;
  if (d.examples.empty())
    fail_config("{}: no usable example ({} line(s), {} skipped{})", what, s.lines, s.skipped,
                d.skipped.empty() ? std::string()
                                  : fmt::format("; first: {}:{}: {}", what, d.skipped[0].line, d.skipped[0].message));
  return d;
}

SftDataset load_sft_dataset(const std::string& path, const Tokenizer& tokenizer, const SftDataOptions& options) {
  std::ifstream in(path, std::ios::binary);
  if (!in) fail_config("cannot read SFT data file {}", path);
  return read_sft_dataset(in, path, tokenizer, options);
}

json SftDataStats::to_json() const {
  return {{"lines", lines},
          {"kept", kept},
          {"skipped", skipped},
          {"truncated", truncated},
          {"prompt_tokens", prompt_tokens},
          {"response_tokens", response_tokens},
          {"fill_tokens", fill_tokens},
          {"response_min", response_min},
          {"response_max", response_max},
          {"response_mean", kept ? static_cast<double>(response_tokens) / static_cast<double>(kept) : 0.0},
          {"canvas_blocks", canvas_blocks},
          {"max_token_id", max_token_id}};
}

std::string SftDataStats::summary() const {
  return fmt::format(
      "{} examples kept, {} skipped, {} truncated; tokens: {} prompt, {} response, {} EOS fill; response length "
      "min {} mean {:.1f} max {}; {} canvas blocks",
      kept, skipped, truncated, prompt_tokens, response_tokens, fill_tokens, response_min,
      kept ? static_cast<double>(response_tokens) / static_cast<double>(kept) : 0.0, response_max, canvas_blocks);
}

std::int32_t resolve_eos_fill_id(const std::string& model_dir, const Tokenizer& tokenizer) {
  namespace fs = std::filesystem;
  const fs::path config = fs::path(model_dir) / "tokenizer_config.json";
  std::string token = "<eos>";
  if (fs::exists(config)) {
    std::ifstream in(config, std::ios::binary);
    std::ostringstream text;
    text << in.rdbuf();
    const json j = parse_json_strict(text.str(), config.string());
    if (j.is_object() && j.contains("eos_token")) {
      const json& e = j["eos_token"];
      if (e.is_string()) token = e.get<std::string>();
      else if (e.is_object() && e.contains("content") && e["content"].is_string()) token = e["content"].get<std::string>();
      else fail_config("{}: \"eos_token\" must be a string or an object with \"content\"", config.string());
    }
  }
  return tokenizer.require_id(token);
}

// ---- cursor ------------------------------------------------------------------------------------------

std::vector<std::int64_t> SftBatchShape::sample_indices(int rank, int m) const {
  std::vector<std::int64_t> out(static_cast<std::size_t>(micro_batch));
  for (int j = 0; j < micro_batch; ++j) out[static_cast<std::size_t>(j)] = (std::int64_t{m} * micro_batch + j) * dp + rank;
  return out;
}

SftCursor::SftCursor(std::int64_t num_examples, std::uint64_t seed, std::int64_t global_batch,
                     std::uint64_t fingerprint)
    : num_examples_(num_examples), global_batch_(global_batch), seed_(seed), fingerprint_(fingerprint) {
  if (global_batch < 1) fail_config("the global batch must be positive, got {}", global_batch);
  if (num_examples < global_batch)
    fail_config("the dataset has {} example(s), fewer than one global batch of {}", num_examples, global_batch);
  if (num_examples > std::int64_t{std::numeric_limits<std::uint32_t>::max()})
    fail_config("the dataset has {} examples; at most 2^32-1 are supported", num_examples);
}

std::vector<std::int64_t> SftCursor::permutation(std::int64_t n, std::uint64_t seed, std::int64_t epoch) {
  std::vector<std::int64_t> p(static_cast<std::size_t>(n));
  for (std::int64_t i = 0; i < n; ++i) p[static_cast<std::size_t>(i)] = i;
  for (std::int64_t i = n - 1; i > 0; --i) {
    const std::uint64_t k = rng::key(seed, rng::Purpose::DataShuffle, static_cast<std::uint64_t>(epoch), 0,
                                     static_cast<std::uint64_t>(i));
    const std::uint32_t j = rng::below(k, static_cast<std::uint32_t>(i + 1));
    std::swap(p[static_cast<std::size_t>(i)], p[j]);
  }
  return p;
}

const std::vector<std::int64_t>& SftCursor::order() {
  if (cached_epoch_ != epoch_) {
    cached_ = permutation(num_examples_, seed_, epoch_);
    cached_epoch_ = epoch_;
  }
  return cached_;
}

std::vector<std::int64_t> SftCursor::next_global_batch() {
  if (position_ + global_batch_ > num_examples_) {  // drop_last: the tail of the epoch is not used
    ++epoch_;
    position_ = 0;
  }
  const std::vector<std::int64_t>& p = order();
  std::vector<std::int64_t> out(p.begin() + position_, p.begin() + position_ + global_batch_);
  position_ += global_batch_;
  return out;
}

json SftCursor::state() const {
  return {{"epoch", epoch_},
          {"position", position_},
          {"seed", seed_},
          {"num_examples", num_examples_},
          {"fingerprint", fmt::format("{:016x}", fingerprint_)}};
}

void SftCursor::restore(const json& st) {
  const auto int_field = [&](const char* key) -> std::int64_t {
    if (!st.is_object() || !st.contains(key)) fail_config("data cursor state: no integer '{}'", key);
    return json_integer(st[key], "data cursor state", key, 0, std::numeric_limits<std::int64_t>::max());
  };
  const std::int64_t epoch = int_field("epoch"), position = int_field("position"), n = int_field("num_examples");
  if (!st.contains("seed") ||
      (!st["seed"].is_number_unsigned() && !(st["seed"].is_number_integer() && st["seed"].get<std::int64_t>() >= 0)))
    fail_config("data cursor state: 'seed' must be a non-negative integer");
  const std::uint64_t seed = st["seed"].get<std::uint64_t>();
  if (seed != seed_) fail_config("data cursor state: saved with seed {}, this run uses seed {}", seed, seed_);
  if (n != num_examples_)
    fail_config("data cursor state: saved for {} examples, the dataset now has {}", n, num_examples_);
  if (st.contains("fingerprint") && fingerprint_ != 0) {
    const std::string saved = st["fingerprint"].is_string() ? st["fingerprint"].get<std::string>() : "";
    if (saved != fmt::format("{:016x}", fingerprint_))
      fail_config("data cursor state: the dataset changed since the checkpoint (fingerprint {} vs {:016x})", saved,
                  fingerprint_);
  }
  if (epoch < 0 || position < 0 || position > num_examples_)
    fail_config("data cursor state: epoch {} position {} out of range", epoch, position);
  epoch_ = epoch;
  position_ = position;
}

// ---- micro-batch -------------------------------------------------------------------------------------

SftMicroBatch assemble_micro_batch(const SftDataset& data, std::span<const std::int64_t> examples,
                                   std::span<const std::int64_t> sample_index, const SftDataOptions& o) {
  DG_CHECK(!examples.empty(), "an empty micro-batch");
  DG_CHECK(examples.size() == sample_index.size(), "{} examples but {} sample indices", examples.size(),
           sample_index.size());
  SftMicroBatch mb;
  mb.B = static_cast<int>(examples.size());
  const std::size_t B = examples.size();
  std::int32_t max_fill = 0, max_canvas = 1;
  for (const std::int64_t i : examples) {
    DG_CHECK(i >= 0 && static_cast<std::size_t>(i) < data.examples.size(), "example {} out of range", i);
    const SftExample& e = data.examples[static_cast<std::size_t>(i)];
    max_fill = std::max(max_fill, e.fill_end);
    max_canvas = std::max(max_canvas, e.canvas_len());
  }
  mb.S = std::min(round_up(max_fill, o.canvas_length), o.max_seq_len);
  mb.R = max_canvas;
  const std::size_t S = static_cast<std::size_t>(mb.S), R = static_cast<std::size_t>(mb.R);
  mb.example.assign(examples.begin(), examples.end());
  mb.sample_index.assign(sample_index.begin(), sample_index.end());
  mb.input_ids.assign(B * S, o.pad_id);
  mb.attention.assign(B * S, 0);
  mb.ar_mask.assign(B * S, 0);
  mb.canvas_target.assign(B * R, o.pad_id);
  mb.canvas_mask.assign(B * R, 0);
  mb.decoder_pos.assign(B * R, 0);
  for (std::size_t b = 0; b < B; ++b) {
    const SftExample& e = data.examples[static_cast<std::size_t>(examples[b])];
    const std::size_t P = static_cast<std::size_t>(e.prompt_len), C = e.ids.size();
    const std::size_t eff = static_cast<std::size_t>(e.fill_end);
    DG_CHECK(P < C && C <= eff && eff <= S, "bad example layout P={} C={} fill_end={} S={}", P, C, eff, S);
    mb.prompt_len.push_back(e.prompt_len);
    mb.content_len.push_back(static_cast<std::int32_t>(C));
    mb.seq_len.push_back(e.fill_end);
    mb.canvas_len.push_back(e.canvas_len());
    std::int32_t* row = &mb.input_ids[b * S];
    std::copy(e.ids.begin(), e.ids.end(), row);
    std::fill(row + C, row + eff, o.eos_fill_id);
    std::fill(&mb.attention[b * S], &mb.attention[b * S] + eff, std::uint8_t{1});
    for (std::size_t t = 0; t + 1 < eff; ++t) mb.ar_mask[b * S + t] = 1;
    mb.ar_pairs += static_cast<std::int64_t>(eff) - 1;
    for (std::size_t j = 0; j < R; ++j) {
      const std::size_t abs = P + j;
      mb.decoder_pos[b * R + j] = static_cast<std::int32_t>(std::min(abs, S - 1));
      if (abs < eff) {
        mb.canvas_target[b * R + j] = row[abs];
        mb.canvas_mask[b * R + j] = 1;
      }
    }
    mb.supervised_tokens += static_cast<std::int64_t>(eff - P);
  }
  return mb;
}

}  // namespace dg
