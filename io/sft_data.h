// SFT data (training.md §2): a JSONL chat dataset read, rendered with the Gemma 4 chat template and
// validated once; a shuffled, resumable cursor over it that is independent of the number of ranks; and
// micro-batches in the recipe's response-window layout (§2.2 DLLMCollator + §2.3 _build_response_window).
//
// Input, one example per line (blank lines skipped):
//   {"messages": [{"role": ..., "content": "..."}, ...]}   OpenAI chat style; other top-level keys ignored
//   {"prompt": "...", "response" | "completion": "..."}    one user turn + one assistant turn
// The last message must be the assistant's; it is the only supervised turn (mask_history=true, §2.1):
// its content, its `<turn|>` and the newline after it get loss 1; every earlier turn is prompt. An
// OpenAI per-message "weight" is honoured only as far as that goes: weight 1 on an earlier assistant
// message (multi-turn supervision) or weight 0 on the last one is refused. Bad lines (malformed JSON,
// no messages, a non-string content, an unsupported role or message order, an empty response after
// trimming and thought stripping, no response token left after truncation) are errors
// "FILE:LINE: reason": with fail_on_error the first one is a ConfigError, otherwise each is recorded in
// SftDataset::skipped and the line is left out.
//
// Per example (P = prompt length = index of the first supervised token, C = rendered length):
//   truncation Right (the recipe, §2.1): the rendered ids are cut at max_seq_len on the right; an
//     example whose prompt alone fills max_seq_len has no supervised token left and is skipped.
//   truncation Drop: an example whose EOS-filled length exceeds max_seq_len is skipped instead.
//   fill_end = min(P + ceil((C-P)/Bk)*Bk, max_seq_len)       (§2.2 step 3, capped as step 4 caps L)
//   [0,P) prompt, loss 0 | [P,C) response, loss 1 | [C,fill_end) EOS fill, loss 1, attended
// so the canvas of an example is its response plus fill, R_b = fill_end - P, a multiple of Bk unless
// the cap cut it. Every canvas position j < R_b is supervised (the fill is real, supervised content).
//
// Cursor (§2.2 sampling, made layout-independent): each epoch is a permutation of the example indices
// keyed by (seed, DataShuffle, epoch); a step consumes the next G = micro_batch*accumulation*dp
// permutation positions (drop_last: a tail shorter than G ends the epoch). Within a step, sample k
// (0 <= k < G) is the "global sample index" that keys all randomness (layers/noise.h); rank r's
// micro-batch m holds k = (m*B + j)*dp + r, j < B (NeMo's g = dp_rank + (mb*lbs + j)*dp). So the
// set of samples of a step and the (example, k) pairs do not depend on dp, B or accumulation.
//
// Micro-batch (no packing; one example per row), S = min(roundup(max_b fill_end_b, Bk), max_seq_len):
//   input_ids [B,S]: content, EOS fill, pad_id;  attention [B,S]: 1 on [0, fill_end_b)
//   canvas [B,R], R = max(1, max_b R_b): clean target ids at absolute positions P_b + j; pad_id where
//     j >= R_b; canvas_mask 1 where j < R_b (= valid = supervised); decoder_pos = min(P_b + j, S-1)
//   ar_mask [B,S]: attention[t] & attention[t+1] for t < S-1 (§5.2: next-token pairs over the whole
//     valid sequence, prompt and fill included; the target of t is input_ids[t+1])
#pragma once
#include <cstddef>
#include <cstdint>
#include <iosfwd>
#include <nlohmann/json.hpp>
#include <span>
#include <string>
#include <vector>

#include "io/chat_template.h"
#include "io/tokenizer.h"

namespace dg {

enum class SftTruncation { Right, Drop };

struct SftDataOptions {
  int max_seq_len = 1024;        // dataset.seq_length: cap on prompt + response + fill
  int canvas_length = 256;       // Bk: the EOS fill rounds the response up to a multiple of it
  std::int32_t pad_id = 0;       // global padding (attention 0, loss 0)
  std::int32_t eos_fill_id = 1;  // the fill token (open question Q1: use resolve_eos_fill_id)
  SftTruncation truncation = SftTruncation::Right;
  bool fail_on_error = false;    // false: skip bad lines and report them; true: ConfigError on the first
  ChatOptions chat;              // enable_thinking would add a system turn; SFT keeps the default off
};

struct SftExample {
  std::vector<std::int32_t> ids;  // rendered (and truncated) tokens, C = ids.size()
  std::int32_t prompt_len = 0;    // P: first supervised token, P < C
  std::int32_t fill_end = 0;      // P + R_b: end of the EOS fill (= attended length)
  std::int64_t line = 0;          // 1-based line in the file

  std::int32_t content_len() const { return static_cast<std::int32_t>(ids.size()); }
  std::int32_t response_len() const { return content_len() - prompt_len; }  // real response tokens
  std::int32_t canvas_len() const { return fill_end - prompt_len; }          // R_b, response + fill
};

struct SftIssue {
  std::int64_t line = 0;
  std::string message;  // the reason, without the file:line prefix
};

struct SftDataStats {
  std::int64_t lines = 0;      // non-blank lines read
  std::int64_t kept = 0;
  std::int64_t skipped = 0;
  std::int64_t truncated = 0;  // kept examples whose response or fill the max_seq_len cap cut
  std::int64_t prompt_tokens = 0, response_tokens = 0, fill_tokens = 0;  // over kept examples
  std::int64_t response_min = 0, response_max = 0;  // real response tokens (incl. <turn|>\n)
  std::int64_t canvas_blocks = 0;                   // sum over examples of ceil(R_b / Bk)
  std::int32_t max_token_id = -1;
  nlohmann::json to_json() const;  // the above plus response_mean
  std::string summary() const;     // one line for the log
};

struct SftDataset {
  std::string path;
  std::vector<SftExample> examples;
  std::vector<SftIssue> skipped;  // in line order
  SftDataStats stats;
  std::uint64_t fingerprint = 0;  // hash of every kept example's ids and P (checked on resume)
};

// Reads and tokenises a JSONL file (see above). ConfigError when the file cannot be read, on the first
// bad line with fail_on_error, or when no example is usable.
SftDataset load_sft_dataset(const std::string& path, const Tokenizer& tokenizer, const SftDataOptions& options);
// The same from a stream; `what` names it in errors.
SftDataset read_sft_dataset(std::istream& in, const std::string& what, const Tokenizer& tokenizer,
                            const SftDataOptions& options);
// One JSONL line to chat messages (throws ConfigError with the reason, no prefix).
std::vector<ChatMessage> parse_sft_line(const std::string& line);

// The fill token (Q1): the eos_token of the model directory's tokenizer_config.json (a string or an
// {"content": ...} object) as an id of `tokenizer`; "<eos>" when the file or the key is absent.
std::int32_t resolve_eos_fill_id(const std::string& model_dir, const Tokenizer& tokenizer);

// ---- cursor ------------------------------------------------------------------------------------------

struct SftBatchShape {
  int micro_batch = 1;   // B, examples per micro-batch per rank
  int accumulation = 1;  // micro-batches per step
  int dp = 1;            // data-parallel ranks
  std::int64_t global_batch() const { return std::int64_t{micro_batch} * accumulation * dp; }
  // The global sample indices k of rank `rank`'s micro-batch `m`: (m*B + j)*dp + rank, j < B.
  std::vector<std::int64_t> sample_indices(int rank, int m) const;
};

class SftCursor {
 public:
  // ConfigError when num_examples < global_batch (no full step fits in an epoch).
  SftCursor(std::int64_t num_examples, std::uint64_t seed, std::int64_t global_batch, std::uint64_t fingerprint = 0);

  // The example indices of the next step's global batch, in global sample order (k = 0..G-1); advances.
  std::vector<std::int64_t> next_global_batch();
  std::int64_t epoch() const { return epoch_; }
  std::int64_t position() const { return position_; }  // next permutation position within the epoch
  std::int64_t steps_per_epoch() const { return num_examples_ / global_batch_; }

  // {"epoch", "position", "seed", "num_examples", "fingerprint"} (fingerprint as a hex string).
  nlohmann::json state() const;
  // Resumes exactly; ConfigError if the seed, the example count or the fingerprint differ (the
  // permutation would not be the same). A different global batch is allowed: the next step starts at
  // the saved position.
  void restore(const nlohmann::json& state);

  // The permutation of epoch `e` (Fisher-Yates driven by rng keys (seed, DataShuffle, e, 0, i)).
  static std::vector<std::int64_t> permutation(std::int64_t num_examples, std::uint64_t seed, std::int64_t epoch);

 private:
  const std::vector<std::int64_t>& order();
  std::int64_t num_examples_, global_batch_;
  std::uint64_t seed_, fingerprint_;
  std::int64_t epoch_ = 0, position_ = 0;
  std::int64_t cached_epoch_ = -1;
  std::vector<std::int64_t> cached_;
};

// ---- micro-batch -------------------------------------------------------------------------------------

struct SftMicroBatch {
  int B = 0, S = 0, R = 0;
  std::vector<std::int64_t> example;       // [B] dataset index
  std::vector<std::int64_t> sample_index;  // [B] global sample index k within the step
  std::vector<std::int32_t> prompt_len;    // [B] P_b
  std::vector<std::int32_t> content_len;   // [B] C_b
  std::vector<std::int32_t> seq_len;       // [B] eff_b = fill_end_b (attended length)
  std::vector<std::int32_t> canvas_len;    // [B] R_b = eff_b - P_b
  std::vector<std::int32_t> input_ids;     // [B,S] clean sequence: content, EOS fill, pad
  std::vector<std::uint8_t> attention;     // [B,S] 1 on [0, eff_b)
  std::vector<std::uint8_t> ar_mask;       // [B,S] attention[t] & attention[t+1]; 0 at t = S-1
  std::vector<std::int32_t> canvas_target; // [B,R] clean ids at P_b + j; pad_id where j >= R_b
  std::vector<std::uint8_t> canvas_mask;   // [B,R] j < R_b: valid and supervised
  std::vector<std::int32_t> decoder_pos;   // [B,R] min(P_b + j, S-1), absolute (RoPE) positions
  std::int64_t supervised_tokens = 0;      // sum of canvas_mask (before block selection)
  std::int64_t ar_pairs = 0;               // sum of ar_mask: this micro-batch's share of N_ar
};

// Rows in the order given; `sample_index` has the same length as `examples`.
SftMicroBatch assemble_micro_batch(const SftDataset& data, std::span<const std::int64_t> examples,
                                   std::span<const std::int64_t> sample_index, const SftDataOptions& options);

}  // namespace dg
