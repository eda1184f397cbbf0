// `dgemma generate`: batch block-diffusion generation over a prompt file.
//
// Input (JSONL, one request per line): the OpenAI batch form {"custom_id", "body": {"messages": [...],
// "max_tokens" | "max_completion_tokens"}} or the plain form {"id", "prompt": "text" | "messages": [...],
// "max_tokens"}; either form may carry "reference": "expected text" (held-out evaluation). Blank lines are skipped; a malformed line, a duplicate id or an unsupported message is
// reported with its line number and either skipped (--on-error skip, the default; an error record is
// written for it when it has an id) or fatal (--on-error fail, checked before any generation).
//
// Output (JSONL, one line per request, in input order): {"id" | "custom_id", "text", "finish_reason",
// "prompt_tokens", "completion_tokens", "canvases", "denoising_steps", "tokens_per_forward",
// ["token_ids"], ["reference", "exact_match"]}, or {"id", "error": {"line", "message"}}. When any request
// has a reference, the summary line reports the exact-match accuracy (text and reference compared after
// trimming surrounding whitespace).
//
// Work split: request i goes to rank i % size (so every rank holds the model and works alone); each rank
// sorts its requests by prompt length, runs them in batches, and appends finished records to
// OUT.parts/rank_<r>.jsonl (flushed per batch). At the end rank 0 merges the parts in input order into
// OUT.tmp and renames it to OUT. --resume reads the parts left by an interrupted run (any number of ranks)
// and skips the ids already done. Randomness is keyed by the request's line index, so a request gives
// the same text whatever the batch, rank count or resume history.
#include <chrono>
#include <filesystem>
#include <fstream>
#include <map>
#include <optional>
#include <set>

#include "jobs/log.h"
#include "io/atomic_file.h"
#include "io/chat_template.h"
#include "jobs/model_load.h"
#include "io/tokenizer.h"
#include "jobs/device_choice.h"
#include "layers/ops.h"
#include "jobs/jobs.h"
#include "layers/generation.h"
#include "parallel/comm.h"

namespace dg {

namespace fs = std::filesystem;
using nlohmann::json;

void generate_options(po::options_description& d) {
  add_device_option(d);
  d.add_options()
      ("model", po::value<std::string>()->value_name("DIR"), "HF model directory (config, weights, tokenizer)")
      ("tokenizer", po::value<std::string>()->value_name("DIR"), "tokenizer.json location (default: --model)")
      ("input", po::value<std::string>()->value_name("FILE"), "prompts, JSONL (OpenAI batch or {id, prompt|messages})")
      ("output", po::value<std::string>()->value_name("FILE"), "results, JSONL (written as FILE.tmp, renamed at the end)")
      ("batch-size", po::value<int>()->default_value(0), "requests run in lock-step (0: chosen from --memory-gb)")
      ("memory-gb", po::value<double>()->default_value(4.0), "memory budget per rank for the batch (KV cache + activations)")
      ("max-new-tokens", po::value<int>(), "default: generation_config.json (256); rounded up to whole canvases")
      ("max-denoising-steps", po::value<int>(), "default: generation_config.json (48)")
      ("entropy-bound", po::value<double>(), "entropy-bound sampler gamma (default 0.1)")
      ("t-min", po::value<double>(), "final temperature of the schedule (default 0.4)")
      ("t-max", po::value<double>(), "first temperature of the schedule (default 0.8)")
      ("stability-threshold", po::value<int>(), "argmax canvases that must agree to stop (default 1)")
      ("confidence-threshold", po::value<double>(), "mean entropy below which a canvas may stop (default 0.005)")
      ("seed", po::value<std::uint64_t>()->default_value(0), "random seed")
      ("thinking", po::bool_switch(), "render prompts with the thinking system turn")
      ("token-ids", po::bool_switch(), "also write the generated token ids")
      ("on-error", po::value<std::string>()->default_value("skip"), "bad input line: skip (report) or fail")
      ("resume", po::bool_switch(), "continue an interrupted run from OUTPUT.parts/")
      ("overwrite", po::bool_switch(), "replace an existing output file")
      ("progress-seconds", po::value<double>()->default_value(5.0), "seconds between progress lines");
}

namespace {

using Clock = std::chrono::steady_clock;

struct Request {
  std::int64_t line = 0;  // 1-based input line
  std::int64_t index = 0; // position among the requests (keys the randomness, orders the output)
  json id;                // the request's id (string or number)
  bool openai = false;
  std::vector<ChatMessage> messages;
  int max_new_tokens = -1;
  std::optional<std::string> reference;  // expected text, for exact-match scoring
  std::string error;      // non-empty: the line is bad; an error record is written
};

std::string trim(const std::string& s) {
  const auto b = s.find_first_not_of(" \t\r\n");
  if (b == std::string::npos) return {};
  return s.substr(b, s.find_last_not_of(" \t\r\n") - b + 1);
}

std::string id_text(const json& id) { return id.is_string() ? id.get<std::string>() : id.dump(); }

std::vector<ChatMessage> parse_messages(const json& m) {
  if (!m.is_array() || m.empty()) throw std::runtime_error("'messages' must be a non-empty array");
  std::vector<ChatMessage> out;
  for (const json& x : m) {
    if (!x.is_object() || !x.contains("role") || !x["role"].is_string())
      throw std::runtime_error("every message needs a string 'role'");
    if (!x.contains("content") || !x["content"].is_string())
      throw std::runtime_error("every message needs a string 'content' (text only)");
    out.push_back({x["role"].get<std::string>(), x["content"].get<std::string>()});
  }
  return out;
}

std::vector<Request> read_requests(const std::string& path, bool fail_on_error) {
  std::ifstream in(path);
  if (!in) fail_config("cannot read prompt file {}", path);
  std::vector<Request> out;
  std::map<std::string, std::int64_t> seen;
  std::string text;
  for (std::int64_t line = 1; std::getline(in, text); ++line) {
    if (text.find_first_not_of(" \t\r") == std::string::npos) continue;
    Request r;
    r.line = line;
    r.index = static_cast<std::int64_t>(out.size());
    try {
      const json j = json::parse(text);
      if (!j.is_object()) throw std::runtime_error("a line must be a JSON object");
      const json* body = &j;
      if (j.contains("custom_id")) {
        r.openai = true;
        r.id = j["custom_id"];
        if (!j.contains("body") || !j["body"].is_object()) throw std::runtime_error("OpenAI batch line without 'body'");
        body = &j["body"];
      } else if (j.contains("id")) {
        r.id = j["id"];
      } else {
        throw std::runtime_error("no 'id' (or 'custom_id')");
      }
      if (!r.id.is_string() && !r.id.is_number_integer()) throw std::runtime_error("the id must be a string or an integer");
      if (auto it = seen.find(id_text(r.id)); it != seen.end())
        throw std::runtime_error(fmt::format("duplicate id {} (first on line {})", id_text(r.id), it->second));
      seen.emplace(id_text(r.id), line);
      if (body->contains("messages")) r.messages = parse_messages((*body)["messages"]);
      else if (body->contains("prompt") && (*body)["prompt"].is_string())
        r.messages = {{"user", (*body)["prompt"].get<std::string>()}};
      else throw std::runtime_error("needs 'messages' or a string 'prompt'");
      for (const json* src : {&j, body})
        if (src->contains("reference")) {
          if (!(*src)["reference"].is_string()) throw std::runtime_error("'reference' must be a string");
          r.reference = (*src)["reference"].get<std::string>();
        }
      for (const char* k : {"max_tokens", "max_completion_tokens", "max_new_tokens"})
        if (body->contains(k)) {
          if (!(*body)[k].is_number_integer() || (*body)[k].get<int>() <= 0)
            throw std::runtime_error(fmt::format("'{}' must be a positive integer", k));
          r.max_new_tokens = (*body)[k].get<int>();
        }
    } catch (const std::exception& e) {
      r.error = e.what();
      if (fail_on_error) fail_config("{}:{}: {}", path, line, r.error);
      log::warn("{}:{}: {} (skipped)", path, line, r.error);
    }
    out.push_back(std::move(r));
  }
  return out;
}

// Records already written by an interrupted run, by request index (the position in the input file).
std::map<std::int64_t, json> read_parts(const fs::path& parts) {
  std::map<std::int64_t, json> done;
  if (!fs::is_directory(parts)) return done;
  for (const auto& f : fs::directory_iterator(parts)) {
    std::ifstream in(f.path());
    std::string text;
    while (std::getline(in, text)) {
      try {  // a line cut by a crash is simply redone
        json j = json::parse(text);
        if (!j.contains("_index") || !j["_index"].is_number_integer()) continue;
        const std::int64_t index = j["_index"].get<std::int64_t>();
        done[index] = std::move(j);  // (index first: the right side of = is evaluated before the left)
      } catch (const json::exception&) {
      }
    }
  }
  return done;
}

GenerationConfig generation_config(const JobContext& ctx, const HfModel& m) {
  GenerationConfig g;
  const json& gc = m.generation_config_json;
  auto from_file = [&](const char* key, auto& field) {
    if (gc.is_object() && gc.contains(key) && !gc[key].is_null()) field = gc[key].get<std::decay_t<decltype(field)>>();
  };
  from_file("max_new_tokens", g.max_new_tokens);
  from_file("max_denoising_steps", g.max_denoising_steps);
  from_file("t_min", g.t_min);
  from_file("t_max", g.t_max);
  from_file("stability_threshold", g.stability_threshold);
  from_file("confidence_threshold", g.confidence_threshold);
  from_file("pad_token_id", g.pad_token_id);
  if (gc.is_object() && gc.contains("sampler_config") && gc["sampler_config"].contains("entropy_bound"))
    g.entropy_bound = gc["sampler_config"]["entropy_bound"].get<double>();
  g.eos_token_ids = m.config.eos_token_ids;
  if (gc.is_object() && gc.contains("eos_token_id")) {
    const json& e = gc["eos_token_id"];
    g.eos_token_ids = e.is_array() ? e.get<std::vector<int>>() : std::vector<int>{e.get<int>()};
  }
  const auto& vm = ctx.vm;
  if (vm.count("max-new-tokens")) g.max_new_tokens = vm["max-new-tokens"].as<int>();
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
  log::info("generate: device {}", device_name(device));
  // A request's result must not depend on its batch mates or the rank count: fixed-row-tile GEMMs.
  set_batch_invariant(true);
  HfModel m = load_hf_model(vm["model"].as<std::string>());
  // Strict-device mode: the weights live "on the device" (every ModelWeights member, so that every view
  // of it, e.g. the gate/up row views of mlp_gate_up, is guarded inside a batch's model path).
  for (const ParamSpec& p : model_params(m.config)) p.slot(m.weights).mark_device_resident();
  const Tokenizer tok = Tokenizer::load(vm.count("tokenizer") ? vm["tokenizer"].as<std::string>() : vm["model"].as<std::string>());
  if (tok.vocab_size() > m.config.vocab_size)
    fail_config("tokenizer {} has {} tokens but the model's vocabulary is {}", tok.path(), tok.vocab_size(), m.config.vocab_size);
  ChatOptions chat = load_chat_options(vm["model"].as<std::string>());
  chat.enable_thinking = vm["thinking"].as<bool>();
  const GenerationConfig g = generation_config(ctx, m);
  std::vector<Request> requests = read_requests(vm["input"].as<std::string>(), on_error == "fail");
  log::info("generate: {} requests from {}; model {}", requests.size(), vm["input"].as<std::string>(), m.config.summary());

  world.barrier();  // every rank has validated the inputs before anyone touches the output
  if (world.rank() == 0) {
    std::error_code ec;
    if (overwrite && !resume) fs::remove_all(parts, ec);
    fs::create_directories(parts);
  }
  world.barrier();
  const std::map<std::int64_t, json> done_before = resume ? read_parts(parts) : std::map<std::int64_t, json>{};
  if (resume) log::info("generate: resuming, {} requests already done", done_before.size());

  // This rank's share, tokenised, sorted by length.
  struct Work {
    const Request* r;
    std::vector<std::int32_t> ids;
  };
  std::vector<Work> work;
  std::vector<json> my_records;
  for (const Request& r : requests) {
    if (r.index % world.size() != world.rank()) continue;
    if (done_before.count(r.index)) continue;
    if (!r.error.empty()) {
      if (!r.id.is_null()) my_records.push_back({{"id", r.id}, {"error", {{"line", r.line}, {"message", r.error}}}, {"_index", r.index}});
      continue;
    }
    try {
      work.push_back({&r, render_chat(tok, r.messages, true, chat)});
    } catch (const ConfigError& e) {
      if (on_error == "fail") fail_config("{}:{}: {}", vm["input"].as<std::string>(), r.line, e.what());
      log::warn("{}:{}: {} (skipped)", vm["input"].as<std::string>(), r.line, e.what());
      my_records.push_back({{"id", r.id}, {"error", {{"line", r.line}, {"message", e.what()}}}, {"_index", r.index}});
    }
  }
  std::stable_sort(work.begin(), work.end(), [](const Work& a, const Work& b) { return a.ids.size() < b.ids.size(); });
  std::int64_t longest = 0;
  for (const Work& w : work) longest = std::max<std::int64_t>(longest, static_cast<std::int64_t>(w.ids.size()));
  const int batch = vm["batch-size"].as<int>() > 0
                        ? vm["batch-size"].as<int>()
                        : auto_batch_size(m.config, longest + g.max_new_tokens + m.config.canvas_length, vm["memory-gb"].as<double>());
  log::info("generate: {} rank(s), batch {} (rank 0 has {} requests to run), canvas {}, <= {} new tokens, {} steps",
            world.size(), batch, work.size(), m.config.canvas_length, g.max_new_tokens, g.max_denoising_steps);

  std::ofstream part(parts / fmt::format("rank_{:05d}.jsonl", world.rank()), std::ios::app);
  if (!part) fail("cannot write {}", (parts / fmt::format("rank_{:05d}.jsonl", world.rank())).string());
  for (const json& rec : my_records) part << rec.dump() << '\n';
  part.flush();

  const auto start = Clock::now();
  auto last = start;
  std::int64_t done = 0, tokens = 0, passes = 0;
  const double every = vm["progress-seconds"].as<double>();
  for (std::size_t b0 = 0; b0 < work.size(); b0 += static_cast<std::size_t>(batch)) {
    const std::size_t b1 = std::min(work.size(), b0 + static_cast<std::size_t>(batch));
    std::vector<GenerationRequest> reqs;
    for (std::size_t i = b0; i < b1; ++i)
      reqs.push_back({work[i].ids, static_cast<std::uint64_t>(work[i].r->index), work[i].r->max_new_tokens});
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
      results = generate(m.config, m.weights, reqs, g, on_progress);
    }
    if (strict_device_mode() && world.rank() == 0) {
      std::string reads;
      for (const auto& [name, n] : host_reads()) reads += fmt::format(" {}={}", name, n);
      log::info("generate: strict-device mode: host reads per batch: batch {} ({} requests, {} decoder steps):{}",
                b0 / static_cast<std::size_t>(batch) + 1, b1 - b0, (passes - passes_before) / static_cast<std::int64_t>(b1 - b0),
                reads);
    }
    for (std::size_t i = b0; i < b1; ++i) {
      const Request& r = *work[i].r;
      const GenerationResult& res = results[i - b0];
      std::vector<std::int32_t> text_ids = res.tokens;
      if (!text_ids.empty() && std::find(g.eos_token_ids.begin(), g.eos_token_ids.end(), text_ids.back()) != g.eos_token_ids.end())
        text_ids.pop_back();  // the EOS ends the text; it is counted, not printed
      json rec = {{r.openai ? "custom_id" : "id", r.id},
                  {"text", tok.decode(text_ids, /*skip_special=*/true)},
                  {"finish_reason", res.finish_reason},
                  {"prompt_tokens", work[i].ids.size()},
                  {"completion_tokens", res.completion_tokens},
                  {"canvases", res.canvases},
                  {"denoising_steps", res.denoising_steps},
                  {"tokens_per_forward", res.tokens_per_forward},
                  {"_index", r.index}};
      if (vm["token-ids"].as<bool>()) rec["token_ids"] = res.tokens;
      if (r.reference) {
        rec["reference"] = *r.reference;
        rec["exact_match"] = trim(rec["text"].get<std::string>()) == trim(*r.reference);
      }
      part << rec.dump() << '\n';
      tokens += res.completion_tokens;
    }
    part.flush();
    if (!part) fail("error writing the partial output in {}", parts.string());
    done += static_cast<std::int64_t>(b1 - b0);
  }
  part.close();

  std::int64_t mine[3] = {done, tokens, passes}, all[3] = {0, 0, 0};
  world.all_reduce(mine, all, 3, DType::I64, ReduceOp::Sum);
  world.barrier();
  if (world.rank() == 0) {  // merge every part (this run's and earlier ones') in input order
    const std::map<std::int64_t, json> records = read_parts(parts);  // ordered by input position
    std::string text;
    std::int64_t scored = 0, matched = 0;
    for (const auto& [index, rec] : records) {
      if (rec.contains("exact_match")) {
        ++scored;
        matched += rec["exact_match"].get<bool>() ? 1 : 0;
      }
      json clean = rec;
      clean.erase("_index");
      text += clean.dump() + "\n";
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
  }
  world.barrier();
  return 0;
}

}  // namespace dg
