// `dgemma generate`: batch block-diffusion generation over a prompt file.
//
// Input and output: one request per JSONL line, in the plain form or the OpenAI batch form
// (jobs/generate_requests.h), and one result line per non-blank input line, in input order, in the form of
// its request (jobs/generate_results.h: an OpenAI batch line is answered in the batch output form). A bad
// line is reported with its line number and either skipped (--on-error skip, the default; it gets an error
// record) or fatal (--on-error fail, checked before any generation). When any request has a reference, the
// summary line reports the exact-match accuracy (text and reference compared after trimming surrounding
// whitespace).
//
// Work split: request i goes to rank i % size (so every rank holds the model and works alone); each rank
// sorts its requests by temperature and prompt length, runs them in batches of one temperature (the
// temperature schedule is the batch's), and appends finished records to OUT.parts/rank_<r>.jsonl (flushed
// per batch). At the end rank 0 checks that the parts hold exactly one record per request (a missing or
// extra record is an error, exit 1, the parts kept), merges them in input order into OUT.tmp and renames it
// to OUT. SIGUSR1/SIGTERM stop the run at a batch boundary (all ranks agree) with exit 42, the parts kept.
// --resume reads the parts left by an interrupted run (any number of ranks): rank 0 first cuts off what an
// interrupted write left (a last line without its end, a line that is not a JSON record) and records
// written twice, then the ids already done are skipped (custom_id in the OpenAI form). Randomness is keyed
// by the request's line index (or by its own seed), so a request gives the same text whatever the batch,
// rank count or resume history.
#include <fmt/ranges.h>

#include <algorithm>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <map>
#include <optional>
#include <set>

#include "jobs/log.h"
#include "io/atomic_file.h"
#include "jobs/exit_codes.h"
#include "jobs/generate_requests.h"
#include "jobs/generate_results.h"
#include "io/chat_template.h"
#include "jobs/model_load.h"
#include "io/tokenizer.h"
#include "jobs/device_choice.h"
#include "layers/gemm_weights.h"
#include "layers/ops.h"
#include "jobs/jobs.h"
#include "layers/generation.h"
#include "layers/random.h"
#include "parallel/comm.h"

namespace dg {

namespace fs = std::filesystem;
using nlohmann::json;

void generate_options(po::options_description& d) {
  add_device_option(d);
  add_threads_option(d);
  d.add_options()
      ("model", po::value<std::string>()->value_name("DIR"), "HF model directory (config, weights, tokenizer)")
      ("tokenizer", po::value<std::string>()->value_name("DIR"), "tokenizer.json location (default: --model)")
      ("input", po::value<std::string>()->value_name("FILE"), "prompts, JSONL (OpenAI batch or {id, prompt|messages})")
      ("model-name", po::value<std::string>()->value_name("NAME"),
       "the model named in OpenAI batch results (default: the --model directory's name)")
      ("created", po::value<std::int64_t>()->value_name("UNIX_TIME"),
       "the creation time in OpenAI batch results (default: the job's start; a fixed one makes files reproducible)")
      ("output", po::value<std::string>()->value_name("FILE"), "results, JSONL (written as FILE.tmp, renamed at the end)")
      ("batch-size", po::value<int>()->default_value(0), "requests run in lock-step (0: chosen from --memory-gb)")
      ("memory-gb", po::value<double>()->default_value(4.0), "memory budget per rank for the batch (KV cache + activations)")
      ("max-new-tokens", po::value<int>(), "default: generation_config.json (256); rounded up to whole canvases")
      ("max-length", po::value<int>(), "prompt + new tokens, used while max-new-tokens is 256 (HF's rule; default: generation_config.json)")
      ("max-denoising-steps", po::value<int>(), "default: generation_config.json (48)")
      ("entropy-bound", po::value<double>(), "entropy-bound sampler gamma (default 0.1)")
      ("t-min", po::value<double>(), "final temperature of the schedule (default 0.4)")
      ("t-max", po::value<double>(), "first temperature of the schedule (default 0.8)")
      ("stability-threshold", po::value<int>(), "argmax canvases that must agree to stop (default 1)")
      ("confidence-threshold", po::value<double>(), "mean entropy below which a canvas may stop (default 0.005)")
      ("seed", po::value<std::uint64_t>()->default_value(0), "random seed")
      ("batch-invariant", po::value<bool>()->default_value(true, "true"),
       "a request's result does not depend on its batch mates or the rank count (fixed-row-tile GEMMs; false: faster)")
      ("pack-weights", po::value<bool>()->default_value(true, "true"),
       "keep the weights of the batch-invariant CPU GEMMs packed once (oneDNN builds; about the weights' size "
       "again in memory, ~1.7x faster steps; false: less memory, different fp32 rounding)")
      ("thinking", po::bool_switch(), "render prompts with the thinking system turn")
      ("token-ids", po::bool_switch(), "also write the generated token ids")
      ("on-error", po::value<std::string>()->default_value("skip"), "bad input line: skip (report) or fail")
      ("resume", po::bool_switch(), "continue an interrupted run from OUTPUT.parts/")
      ("overwrite", po::bool_switch(), "replace an existing output file")
      ("progress-seconds", po::value<double>()->default_value(5.0), "seconds between progress lines");
}

namespace {

using Clock = std::chrono::steady_clock;

// The partial outputs (OUT.parts/*.jsonl), line by line. A line is a record when it is complete (ends
// with '\n') and is a JSON object with an integer "_index" (the request's position in the input).
struct PartLine {
  std::int64_t number = 0;           // 1-based line number in its file
  std::size_t offset = 0, size = 0;  // its bytes in the file, '\n' included
  bool complete = false;
  std::int64_t index = -1;           // the record's "_index"
  std::optional<json> record;
};
struct PartFile {
  fs::path path;
  std::string bytes;
  std::vector<PartLine> lines;
};

std::vector<PartFile> scan_parts(const fs::path& parts) {
  std::vector<PartFile> files;
  if (!fs::is_directory(parts)) return files;
  for (const auto& e : fs::directory_iterator(parts))  // (not the .tmp of an unfinished rewrite)
    if (e.is_regular_file() && e.path().extension() == ".jsonl") files.push_back({e.path(), {}, {}});
  std::sort(files.begin(), files.end(), [](const PartFile& a, const PartFile& b) { return a.path < b.path; });
  for (PartFile& f : files) {
    std::ifstream in(f.path, std::ios::binary);
    f.bytes.assign(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
    if (!in && !in.eof()) fail("cannot read {}", f.path.string());
    for (std::size_t at = 0; at < f.bytes.size();) {
      PartLine l;
      const std::size_t end = f.bytes.find('\n', at);
      l.number = static_cast<std::int64_t>(f.lines.size()) + 1;
      l.offset = at;
      l.complete = end != std::string::npos;
      l.size = (l.complete ? end + 1 : f.bytes.size()) - at;
      if (l.complete) try {
          json j = json::parse(std::string_view(f.bytes).substr(at, end - at));
          if (j.is_object() && j.contains("_index") && j["_index"].is_number_integer()) {
            l.index = j["_index"].get<std::int64_t>();
            l.record = std::move(j);
          }
        } catch (const json::exception&) {
        }
      at += l.size;
      f.lines.push_back(std::move(l));
    }
  }
  return files;
}

// "in.jsonl:12 (id abc)", for messages about a request.
std::string describe(const Request& r, const std::string& input) {
  return r.id.is_null() ? fmt::format("{}:{} (no id)", input, r.line) : fmt::format("{}:{} (id {})", input, r.line, id_text(r.id));
}

// The id a record carries ("custom_id" for an OpenAI-form result, "id" otherwise; null for a line that had
// none), and whether the record is the one of request r: its id, and for a request without an id its line.
json record_id(const json& rec) {
  if (rec.contains("custom_id")) return rec["custom_id"];
  return rec.contains("id") ? rec["id"] : json();
}
bool is_record_of(const json& rec, const Request& r) {
  if (record_id(rec) != r.id) return false;
  if (!r.id.is_null()) return true;
  return rec.contains("error") && rec["error"].is_object() && rec["error"].contains("line") && rec["error"]["line"] == r.line;
}
// Empty when `l` (a record) is a record of this input's request at its index, else what it is instead.
std::string foreign_record(const PartLine& l, const std::vector<Request>& requests, const std::string& input) {
  if (l.index < 0 || l.index >= static_cast<std::int64_t>(requests.size()))
    return fmt::format("a record with _index {} (id {}), but {} has {} requests", l.index,
                       id_text(record_id(*l.record)), input, requests.size());
  const Request& r = requests[static_cast<std::size_t>(l.index)];
  if (is_record_of(*l.record, r)) return {};
  return fmt::format("a record of id {} in the place of {}", id_text(record_id(*l.record)), describe(r, input));
}

// "a, b, c and 4 more"
std::string first_few(const std::vector<std::string>& items, std::size_t shown = 10) {
  std::string out;
  for (std::size_t i = 0; i < items.size() && i < shown; ++i) out += (i ? ", " : "") + items[i];
  if (items.size() > shown) out += fmt::format(" and {} more", items.size() - shown);
  return out;
}
std::string n_of(std::size_t n, const char* noun) { return fmt::format("{} {}{}", n, noun, n == 1 ? "" : "s"); }

// --resume, on rank 0 before any rank reads or appends to the parts: every part file keeps only its
// records, each request's first one; the rest (a last line an interrupted write left without its end, a
// line that is not a JSON record, a record written twice) is cut off, saying how many bytes from which
// file. A record of another input (an index or id this input does not have there) stops the resume.
void repair_parts(const fs::path& parts, const std::vector<Request>& requests, const std::string& input) {
  const std::vector<PartFile> files = scan_parts(parts);
  struct Cut {
    const PartFile* file;
    std::string kept;
    std::size_t dropped = 0;
    bool tail_only = true;  // only the end of the file goes: a truncation
    std::vector<std::string> why;
  };
  std::vector<Cut> cuts;
  std::set<std::int64_t> seen;
  for (const PartFile& f : files) {
    Cut c{&f, {}, 0, true, {}};
    for (const PartLine& l : f.lines) {
      std::string why;
      if (!l.complete) why = "cut short (no end of line)";
      else if (!l.record) why = "not a JSON record";
      else if (const std::string foreign = foreign_record(l, requests, input); !foreign.empty())
        fail_config("{}:{}: {}: these parts belong to another input (use --overwrite to start over)", f.path.string(),
                    l.number, foreign);
      else if (!seen.insert(l.index).second)
        why = fmt::format("a second record of {}", describe(requests[static_cast<std::size_t>(l.index)], input));
      if (why.empty()) {
        if (c.dropped > 0) c.tail_only = false;
        c.kept.append(f.bytes, l.offset, l.size);
      } else {
        c.dropped += l.size;
        c.why.push_back(fmt::format("line {}: {}", l.number, why));
      }
    }
    if (c.dropped > 0) cuts.push_back(std::move(c));
  }
  for (const Cut& c : cuts) {
    if (c.tail_only) fs::resize_file(c.file->path, c.kept.size());
    else write_file_atomic(c.file->path.string(), c.kept, /*overwrite=*/true);
    log::warn("generate: resume: {}: dropped {} bytes: {}", c.file->path.string(), c.dropped, first_few(c.why, 5));
  }
}

// Records already written (after repair_parts), by request index (the position in the input file).
std::map<std::int64_t, json> read_parts(const fs::path& parts) {
  std::map<std::int64_t, json> done;
  for (PartFile& f : scan_parts(parts))
    for (PartLine& l : f.lines)
      if (l.record && !done.count(l.index)) done.emplace(l.index, std::move(*l.record));
  return done;
}

// The merge: exactly one record per request, else (a record lost or written twice, a broken line, a
// record of another input) an error that names the requests and lines.
std::map<std::int64_t, json> merge_parts(const fs::path& parts, const std::vector<Request>& requests,
                                         const std::string& input, std::string& problem) {
  std::vector<PartFile> files = scan_parts(parts);
  std::vector<int> found(requests.size(), 0);  // records of each request
  std::vector<std::string> stray;
  std::map<std::int64_t, json> records;
  for (PartFile& f : files)
    for (PartLine& l : f.lines) {
      if (!l.complete || !l.record) {
        stray.push_back(fmt::format("{}:{} ({})", f.path.string(), l.number, l.complete ? "not a JSON record" : "cut short"));
      } else if (const std::string foreign = foreign_record(l, requests, input); !foreign.empty()) {
        stray.push_back(fmt::format("{}:{} ({})", f.path.string(), l.number, foreign));
      } else {
        ++found[static_cast<std::size_t>(l.index)];
        if (!records.count(l.index)) records.emplace(l.index, std::move(*l.record));
      }
    }
  std::vector<std::string> missing, doubled;
  std::size_t n_doubled = 0;
  for (std::size_t i = 0; i < requests.size(); ++i) {
    if (found[i] == 0) missing.push_back(describe(requests[i], input));
    if (found[i] < 2 || ++n_doubled > 10) continue;  // (the first 10 are named with their lines)
    std::vector<std::string> at;
    for (const PartFile& f : files)
      for (const PartLine& l : f.lines)
        if (l.record && l.index == static_cast<std::int64_t>(i)) at.push_back(fmt::format("{}:{}", f.path.string(), l.number));
    doubled.push_back(fmt::format("{} in {}", describe(requests[i], input), fmt::join(at, " and ")));
  }
  std::vector<std::string> what;
  if (!missing.empty()) what.push_back(fmt::format("no result for {}: {}", n_of(missing.size(), "request"), first_few(missing)));
  if (n_doubled > 0)
    what.push_back(fmt::format("{} with more than one result: {}{}", n_of(n_doubled, "request"), first_few(doubled),
                               n_doubled > doubled.size() ? fmt::format(" and {} more", n_doubled - doubled.size()) : ""));
  if (!stray.empty())
    what.push_back(fmt::format("{} that {} no result of this input: {}", n_of(stray.size(), "line"),
                               stray.size() == 1 ? "is" : "are", first_few(stray)));
  if (!what.empty())
    problem = fmt::format("generate: {}/ does not hold one result per request: {}. Nothing is written to the output; the "
                          "results are kept there: rerun with --resume to drop the extra lines and generate the "
                          "missing results",
                          parts.string(), fmt::join(what, "; "));
  return records;
}

GenerationConfig generation_config(const JobContext& ctx, const HfModel& m) {
  GenerationConfig g;
  const json& gc = m.generation_config_json;
  auto from_file = [&](const char* key, auto& field) {
    if (gc.is_object() && gc.contains(key) && !gc[key].is_null()) field = gc[key].get<std::decay_t<decltype(field)>>();
  };
  from_file("max_new_tokens", g.max_new_tokens);
  from_file("max_length", g.max_length);
  from_file("max_denoising_steps", g.max_denoising_steps);
  from_file("t_min", g.t_min);
  from_file("t_max", g.t_max);
  from_file("stability_threshold", g.stability_threshold);
  from_file("confidence_threshold", g.confidence_threshold);
  from_file("pad_token_id", g.pad_token_id);
  if (gc.is_object() && gc.contains("sampler_config") && gc["sampler_config"].contains("entropy_bound"))
    g.entropy_bound = gc["sampler_config"]["entropy_bound"].get<double>();
  // Like the reference's generate: the EOS set comes from generation_config.json only (config.json's
  // eos_token_id is not used); without one, no EOS stops a request.
  g.eos_token_ids.clear();
  if (gc.is_object() && gc.contains("eos_token_id") && !gc["eos_token_id"].is_null()) {
    const json& e = gc["eos_token_id"];
    g.eos_token_ids = e.is_array() ? e.get<std::vector<int>>() : std::vector<int>{e.get<int>()};
  }
  if (g.eos_token_ids.empty())
    log::warn("generate: {} sets no eos_token_id: as with Hugging Face's generate, no EOS token ends a request "
              "(each runs to its max_new_tokens)", m.generation_config_json.is_object() ? "generation_config.json"
                                                                                        : "the model has no generation_config.json and");
  const auto& vm = ctx.vm;
  if (vm.count("max-new-tokens")) g.max_new_tokens = vm["max-new-tokens"].as<int>();
  if (vm.count("max-length")) {
    g.max_length = vm["max-length"].as<int>();
    if (g.max_length <= 0) fail_config("generate: --max-length must be positive, not {}", g.max_length);
  }
  if (vm.count("max-denoising-steps")) g.max_denoising_steps = vm["max-denoising-steps"].as<int>();
  if (vm.count("entropy-bound")) g.entropy_bound = vm["entropy-bound"].as<double>();
  if (vm.count("t-min")) g.t_min = vm["t-min"].as<double>();
  if (vm.count("t-max")) g.t_max = vm["t-max"].as<double>();
  if (vm.count("stability-threshold")) g.stability_threshold = vm["stability-threshold"].as<int>();
  if (vm.count("confidence-threshold")) g.confidence_threshold = vm["confidence-threshold"].as<double>();
  g.seed = vm["seed"].as<std::uint64_t>();
  g.validate();
  return g;
}

// Requests per batch from the memory budget: the KV cache of every layer at the longest length plus a
// few canvas-sized activation buffers per layer (f32 on the CPU backend).
int auto_batch_size(const ModelConfig& c, std::int64_t longest, double memory_gb) {
  double per = 0;
  for (int i = 0; i < c.num_layers; ++i) per += 2.0 * 4 * double(longest) * c.layer(i).num_kv_heads * c.layer(i).head_dim;
  per += 16.0 * 4 * c.canvas_length * std::max<double>(c.hidden_size, c.num_heads * 512.0);
  return static_cast<int>(std::clamp(memory_gb * 1e9 / std::max(per, 1.0), 1.0, 256.0));
}

// A request to run: the request and its prompt's ids.
struct Work {
  const Request* r;
  std::vector<std::int32_t> ids;
  double temperature() const { return r->temperature.value_or(1.0); }
};

// The batches of a rank's work (sorted by temperature, then length): runs of at most `batch` requests of
// one temperature, as [begin, end) positions.
std::vector<std::pair<std::size_t, std::size_t>> batch_ranges(const std::vector<Work>& work, std::size_t batch) {
  std::vector<std::pair<std::size_t, std::size_t>> out;
  for (std::size_t b0 = 0; b0 < work.size();) {
    std::size_t b1 = b0 + 1;
    while (b1 < work.size() && b1 - b0 < batch && work[b1].temperature() == work[b0].temperature()) ++b1;
    out.emplace_back(b0, b1);
    b0 = b1;
  }
  return out;
}

// A batch's sampling configuration: the job's, with the temperature schedule multiplied by the requests'
// temperature (1: the schedule as it is).
GenerationConfig batch_config(const GenerationConfig& g, double temperature) {
  GenerationConfig b = g;
  b.t_min *= temperature;
  b.t_max *= temperature;
  return b;
}

// A request's random numbers are keyed by its position, or by its own seed when it has one (then it gives
// the same text on any line).
GenerationRequest generation_request(const Work& w) {
  const Request& r = *w.r;
  return {w.ids, r.seed ? rng::seeded_sample(*r.seed) : static_cast<std::uint64_t>(r.index), r.max_new_tokens};
}

// The model name and creation time of OpenAI-form results: --model-name, else the model directory's name;
// --created, else rank 0's start time (one for the whole run).
CompletionMeta completion_meta(const JobContext& ctx, Comm& world) {
  const auto& vm = ctx.vm;
  CompletionMeta meta;
  meta.token_ids = vm["token-ids"].as<bool>();
  fs::path dir = fs::absolute(vm["model"].as<std::string>()).lexically_normal();
  if (!dir.has_filename()) dir = dir.parent_path();
  meta.model = vm.count("model-name") ? vm["model-name"].as<std::string>() : dir.filename().string();
  std::int64_t created = vm.count("created")
                             ? vm["created"].as<std::int64_t>()
                             : std::chrono::duration_cast<std::chrono::seconds>(
                                   std::chrono::system_clock::now().time_since_epoch()).count();
  world.broadcast(&created, 1, DType::I64, 0);
  meta.created = created;
  return meta;
}

}  // namespace

int generate_run(JobContext& ctx) {
  const auto& vm = ctx.vm;
  for (const char* o : {"model", "input", "output"})
    if (!vm.count(o)) fail_config("generate: --{} is required", o);
  const std::string on_error = vm["on-error"].as<std::string>();
  if (on_error != "skip" && on_error != "fail") fail_config("generate: --on-error must be skip or fail");
  const fs::path output = vm["output"].as<std::string>(), parts = output.string() + ".parts";
  const bool resume = vm["resume"].as<bool>(), overwrite = vm["overwrite"].as<bool>();
  if (fs::exists(output) && !overwrite && !resume)
    fail_config("output {} already exists (use --overwrite to replace it)", output.string());
  if (fs::exists(parts) && !resume && !overwrite)
    fail_config("{} holds an interrupted run: use --resume to continue it or --overwrite to start over", parts.string());
  if (vm["batch-size"].as<int>() < 0) fail_config("generate: --batch-size must be >= 0");

  Comm& world = *ctx.rt.world;
  const Device device = resolve_device(ctx, "generate", /*cuda_path_ready=*/false);
  resolve_threads(ctx, "generate");
  log::info("generate: device {}", device_name(device));
  // A request's result must not depend on its batch mates or the rank count: fixed-row-tile GEMMs.
  set_batch_invariant(vm["batch-invariant"].as<bool>());
  if (!batch_invariant())
    log::info("generate: --batch-invariant false: results may change with --batch-size and the rank count");
  HfModel m = load_hf_model(vm["model"].as<std::string>());
  // Strict-device mode: the weights live "on the device" (every ModelWeights member, so that every view
  // of it, e.g. the gate/up row views of mlp_gate_up, is guarded inside a batch's model path).
  for (const ParamSpec& p : model_params(m.config)) p.slot(m.weights).mark_device_resident();
  // The weights do not change during the job: the batch-invariant CPU GEMMs may keep them packed
  // (layers/gemm_weights.h; about the weights' size again in memory), unless --pack-weights false.
  std::vector<Tensor> constant_weights;
  if (vm["pack-weights"].as<bool>())
    for (const ParamSpec& p : model_params(m.config)) constant_weights.push_back(p.slot(m.weights));
  else
    log::info("generate: --pack-weights false: the CPU GEMMs pack the weights on every call");
  const ConstantWeights packed_weights(constant_weights);
  const Tokenizer tok = Tokenizer::load(vm.count("tokenizer") ? vm["tokenizer"].as<std::string>() : vm["model"].as<std::string>());
  if (tok.vocab_size() > m.config.vocab_size)
    fail_config("tokenizer {} has {} tokens but the model's vocabulary is {}", tok.path(), tok.vocab_size(), m.config.vocab_size);
  ChatOptions chat = load_chat_options(vm["model"].as<std::string>());
  chat.enable_thinking = vm["thinking"].as<bool>();
  const GenerationConfig g = generation_config(ctx, m);
  std::vector<Request> requests = read_requests(vm["input"].as<std::string>(), on_error == "fail");
  log::info("generate: {} requests from {}; model {}", requests.size(), vm["input"].as<std::string>(), m.config.summary());
  const CompletionMeta meta = completion_meta(ctx, world);

  const std::string input = vm["input"].as<std::string>();

  world.barrier();  // every rank has validated the inputs before anyone touches the output
  agree(world, [&] {
    if (world.rank() != 0) return;
    std::error_code ec;
    if (overwrite && !resume) fs::remove_all(parts, ec);
    fs::create_directories(parts);
    if (resume) repair_parts(parts, requests, input);  // before any rank reads or appends to the parts
  });
  const std::map<std::int64_t, json> done_before = resume ? read_parts(parts) : std::map<std::int64_t, json>{};
  if (resume) log::info("generate: resuming, {} requests already done", done_before.size());

  // This rank's share, tokenised, sorted by temperature and length.
  std::vector<Work> work;
  std::vector<json> my_records;
  for (const Request& r : requests) {
    if (r.index % world.size() != world.rank()) continue;
    if (done_before.count(r.index)) continue;
    if (!r.error.empty()) {  // (a line without a readable id: "id": null, known by its error.line)
      my_records.push_back(error_record(r, r.error, r.error_code, r.error_param));
      continue;
    }
    try {
      work.push_back({&r, render_chat(tok, r.messages, true, chat)});
    } catch (const ConfigError& e) {
      if (on_error == "fail") fail_config("{}:{}: {}", input, r.line, e.what());
      log::warn("{}:{}: {} (skipped)", input, r.line, e.what());
      my_records.push_back(error_record(r, e.what(), "unsupported_value", r.openai ? "body.messages" : "messages"));
    }
  }
  std::stable_sort(work.begin(), work.end(), [](const Work& a, const Work& b) {
    return a.temperature() != b.temperature() ? a.temperature() < b.temperature() : a.ids.size() < b.ids.size();
  });
  std::int64_t longest = 0;
  for (const Work& w : work) longest = std::max<std::int64_t>(longest, static_cast<std::int64_t>(w.ids.size()));
  const int batch = vm["batch-size"].as<int>() > 0
                        ? vm["batch-size"].as<int>()
                        : auto_batch_size(m.config, longest + g.max_new_tokens + m.config.canvas_length, vm["memory-gb"].as<double>());
  log::info("generate: {} rank(s), batch {} (rank 0 has {} requests to run), canvas {}, <= {} new tokens, {} steps",
            world.size(), batch, work.size(), m.config.canvas_length, g.max_new_tokens, g.max_denoising_steps);

  std::ofstream part(parts / fmt::format("rank_{:05d}.jsonl", world.rank()), std::ios::app);
  if (!part) fail("cannot write {}", (parts / fmt::format("rank_{:05d}.jsonl", world.rank())).string());
  for (const json& rec : my_records) part << dump_line(rec) << '\n';
  part.flush();
  if (!part) fail("error writing the partial output in {}", parts.string());

  // Every rank goes through the same number of batch boundaries (the most any rank has), where all agree
  // on a stop: a rank out of work runs empty turns.
  const auto batches = batch_ranges(work, static_cast<std::size_t>(batch));
  const std::int64_t my_batches = static_cast<std::int64_t>(batches.size());
  std::int64_t turns = 0;
  world.all_reduce(&my_batches, &turns, 1, DType::I64, ReduceOp::Max);
  const auto start = Clock::now();
  auto last = start;
  std::int64_t done = 0, tokens = 0, passes = 0;
  bool stopped = false;
  const double every = vm["progress-seconds"].as<double>();
  for (std::int64_t turn = 0; turn < turns; ++turn) {
    if (ctx.rt.stop_requested && ctx.rt.stop_requested()) {  // SIGUSR1/SIGTERM on any rank
      stopped = true;
      break;
    }
    if (turn >= my_batches) continue;
    const auto [b0, b1] = batches[static_cast<std::size_t>(turn)];
    std::vector<GenerationRequest> reqs;
    for (std::size_t i = b0; i < b1; ++i) reqs.push_back(generation_request(work[i]));
    const std::int64_t passes_before = passes;
    const GenerationProgress on_progress = [&](std::int64_t p) {
      passes = passes_before + p;
      const auto now = Clock::now();
      if (std::chrono::duration<double>(now - last).count() >= every) {
        last = now;
        const double s = std::chrono::duration<double>(now - start).count();
        const double rate = done > 0 ? done / s : 0;
        log::info("generate: rank 0 {}/{} prompts, {:.1f} tokens/s, {:.1f} forwards/s, ETA {:.0f} s", done, work.size(),
                  tokens / s, passes / s, rate > 0 ? (work.size() - done) / rate : 0.0);
      }
    };
    reset_host_reads();
    std::vector<GenerationResult> results;
    {
      ModelPathScope in_batch;  // strict-device mode: from here on the model's tensors are "on the device"
      results = generate(m.config, m.weights, reqs, batch_config(g, work[b0].temperature()), on_progress);
    }
    if (strict_device_mode() && world.rank() == 0) {
      std::string reads;
      for (const auto& [name, n] : host_reads()) reads += fmt::format(" {}={}", name, n);
      log::info("generate: strict-device mode: host reads per batch: batch {} ({} requests, {} decoder steps):{}",
                turn + 1, b1 - b0, (passes - passes_before) / static_cast<std::int64_t>(b1 - b0),
                reads);
    }
    for (std::size_t i = b0; i < b1; ++i) {
      const Request& r = *work[i].r;
      const GenerationResult& res = results[i - b0];
      const Completion c = make_completion(r, res, static_cast<std::int64_t>(work[i].ids.size()), tok, g);
      part << dump_line(result_record(r, c, res, meta)) << '\n';
      tokens += res.completion_tokens;
    }
    part.flush();
    if (!part) fail("error writing the partial output in {}", parts.string());
    done += static_cast<std::int64_t>(b1 - b0);
  }
  part.close();
  if (!part) fail("error writing the partial output in {}", parts.string());

  std::int64_t mine[4] = {done, tokens, passes, static_cast<std::int64_t>(my_records.size())}, all[4] = {0, 0, 0, 0};
  world.all_reduce(mine, all, 4, DType::I64, ReduceOp::Sum);
  if (stopped) {
    const std::int64_t kept = static_cast<std::int64_t>(done_before.size()) + all[0] + all[3];
    log::info("generate: stopped on a signal after {} of {} requests ({} generated now); the results so far are in "
              "{}/: rerun with --resume to continue (exit {})",
              kept, requests.size(), all[0], parts.string(), static_cast<int>(kExitStoppedOnSignal));
    return kExitStoppedOnSignal;
  }
  std::string problem;
  if (world.rank() == 0) {  // merge every part (this run's and earlier ones') in input order
    const std::map<std::int64_t, json> records = merge_parts(parts, requests, input, problem);  // by input position
    if (problem.empty()) {
      std::string text;
      std::int64_t scored = 0, matched = 0;
      for (const auto& [index, rec] : records) {
        if (const std::optional<bool> match = record_exact_match(rec)) {
          ++scored;
          matched += *match ? 1 : 0;
        }
        json clean = rec;
        clean.erase("_index");
        text += dump_line(clean) + "\n";
      }
      write_file_atomic(output.string(), text, overwrite || resume);
      std::error_code ec;
      fs::remove_all(parts, ec);
      const double s = std::max(1e-9, std::chrono::duration<double>(Clock::now() - start).count());
      log::info("generate: {} results written to {} ({} generated now: {} tokens, {} decoder passes, {:.1f} tokens/s, "
                "{:.2f} tokens per forward)",
                records.size(), output.string(), all[0], all[1], all[2], all[1] / s,
                all[2] > 0 ? double(all[1]) / double(all[2]) : 0.0);
      if (scored > 0)
        log::info("generate: exact match {}/{} = {:.1f}% (requests with a reference)", matched, scored,
                  100.0 * double(matched) / double(scored));
    } else {
      log::error("{}", problem);
    }
  }
  if (any_rank(world, !problem.empty())) return kExitRuntimeError;
  return 0;
}

}  // namespace dg
