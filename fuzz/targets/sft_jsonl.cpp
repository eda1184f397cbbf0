// Fuzz target: chat JSONL for SFT (io/sft_data.h). The input is a JSONL file, read with read_sft_dataset
// (with the repository's test tokenizer, tests/fixtures/tokenizer) under two sets of options: the defaults
// (max_seq_len 1024, canvas 256, Right truncation) and a tight one derived from the input size
// (max_seq_len 16..63, canvas 1..7, Right or Drop), so truncation and fill edge cases are reached with
// short inputs. Bad lines are skipped (fail_on_error=false) and also read once with fail_on_error=true.
// A dataset that loads is run through the cursor and assemble_micro_batch (an internal DG_CHECK failing
// there means the reader let through an example it documents as impossible, and counts as a crash).
// Invariants (sft_data.h): kept == examples.size(); 0 < P < C <= fill_end <= max_seq_len; ids in the vocab.
#include <algorithm>
#include <numeric>
#include <sstream>
#include <string>

#include "fuzz/targets/fuzz_util.h"
#include "io/sft_data.h"

#ifndef DGEMMA_FIXTURES
#error "DGEMMA_FIXTURES (the tests/fixtures directory) must be defined"
#endif

using namespace dg;

namespace {
const Tokenizer& tokenizer() {
  static const Tokenizer t = Tokenizer::load(DGEMMA_FIXTURES "/tokenizer");
  return t;
}

void check_and_batch(const SftDataset& d, const SftDataOptions& o) {
  const int vocab = tokenizer().vocab_size();
  if (d.stats.kept != static_cast<std::int64_t>(d.examples.size())) fuzz::invariant_failed("stats.kept != examples");
  if (d.examples.empty()) fuzz::invariant_failed("read_sft_dataset returned no example without throwing");
  for (const SftExample& e : d.examples) {
    if (!(0 < e.prompt_len && e.prompt_len < e.content_len() && e.content_len() <= e.fill_end &&
          e.fill_end <= o.max_seq_len))
      fuzz::invariant_failed("example layout: need 0 < P < C <= fill_end <= max_seq_len");
    for (std::int32_t id : e.ids)
      if (id < 0 || id >= vocab) fuzz::invariant_failed("token id outside the vocabulary");
  }
  try {
    const std::int64_t n = static_cast<std::int64_t>(d.examples.size());
    const std::int64_t G = std::min<std::int64_t>(n, 3);
    SftCursor cursor(n, 7, G, d.fingerprint);
    const std::vector<std::int64_t> batch = cursor.next_global_batch();
    std::vector<std::int64_t> k(batch.size());
    std::iota(k.begin(), k.end(), 0);
    const SftMicroBatch mb = assemble_micro_batch(d, batch, k, o);
    if (mb.B != static_cast<int>(batch.size()) || mb.input_ids.size() != batch.size() * mb.S)
      fuzz::invariant_failed("micro-batch shape");
  } catch (const std::exception& e) {
    std::fprintf(stderr, "fuzz: cursor/micro-batch on a loaded dataset threw: %s\n", e.what());
    fuzz::invariant_failed("a dataset read_sft_dataset accepted cannot be batched");
  }
}

void read_with(const std::string& text, const SftDataOptions& o) {
  fuzz::run_guarded([&] {
    std::istringstream in(text);
    const SftDataset d = read_sft_dataset(in, "fuzz.jsonl", tokenizer(), o);
    check_and_batch(d, o);
  });
}
}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::string text(reinterpret_cast<const char*>(data), size);
  (void)tokenizer();

  SftDataOptions normal;
  normal.pad_id = tokenizer().require_id("<pad>");
  normal.eos_fill_id = tokenizer().require_id("<eos>");
  read_with(text, normal);

  SftDataOptions tight = normal;
  tight.max_seq_len = 16 + static_cast<int>(size % 48);
  tight.canvas_length = 1 + static_cast<int>(size % 7);
  tight.truncation = size % 2 ? SftTruncation::Drop : SftTruncation::Right;
  read_with(text, tight);

  SftDataOptions strict = normal;
  strict.fail_on_error = true;
  read_with(text, strict);
  return 0;
}
