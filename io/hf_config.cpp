#include "io/hf_config.h"

#include <filesystem>
#include <fstream>
#include <limits>
#include <sstream>

#include "io/strict_json.h"
#include "layers/error.h"

namespace dg {

namespace {

using nlohmann::json;
constexpr int kMaxInt = std::numeric_limits<int>::max();

double positive_number(const JsonFields& f, const char* key, double fallback) {
  const double v = f.number(key, fallback);
  if (!(v > 0)) fail_config("{}: '{}' must be a positive number, got {}", f.file(), f.key(key), v);
  return v;
}

RopeSpec parse_rope(const JsonFields& r, RopeSpec fallback) {
  const std::string type = r.string("rope_type", fallback.kind == RopeSpec::Kind::Default ? "default" : "proportional");
  RopeSpec s;
  if (type == "default") s.kind = RopeSpec::Kind::Default;
  else if (type == "proportional") s.kind = RopeSpec::Kind::Proportional;
  else fail_config("{}: '{}': rope_type '{}' is not supported (default or proportional)", r.file(), r.key("rope_type"),
                   type);
  s.theta = positive_number(r, "rope_theta", fallback.theta);
  s.partial_rotary_factor = r.number("partial_rotary_factor", s.kind == RopeSpec::Kind::Default ? 1.0 : 0.25);
  if (!(s.partial_rotary_factor > 0 && s.partial_rotary_factor <= 1))
    fail_config("{}: '{}' must be in (0, 1], got {}", r.file(), r.key("partial_rotary_factor"), s.partial_rotary_factor);
  if (const double factor = r.number("factor", 1.0); factor != 1.0)
    fail_config("{}: '{}': rope 'factor' {} is not supported (only 1)", r.file(), r.key("factor"), factor);
  return s;
}

// A token id or a list of them (eos_token_id).
std::vector<int> int_or_list(const JsonFields& f, const char* key) {
  std::vector<int> out;
  const json& v = *f.find(key);
  if (v.is_array()) {
    for (std::size_t i = 0; i < v.size(); ++i)
      out.push_back(json_integer_as<int>(v[i], f.file(), fmt::format("{}[{}]", f.key(key), i), 0, kMaxInt));
  } else {
    out.push_back(json_integer_as<int>(v, f.file(), f.key(key), 0, kMaxInt));
  }
  return out;
}

}  // namespace

ModelConfig parse_model_config(const json& top, const std::string& where) {
  if (!top.is_object()) fail_config("{}: the configuration must be a JSON object", where);
  const JsonFields r(top, where);
  const std::string model_type = r.string("model_type", "");
  const bool nested = r.has("text_config");
  if (!nested && model_type != "diffusion_gemma_text")
    fail_config("{}: not a DiffusionGemma config (model_type '{}', no text_config)", where, model_type);
  if (nested && !model_type.empty() && model_type != "diffusion_gemma")
    fail_config("{}: model_type '{}' is not diffusion_gemma", where, model_type);
  const JsonFields t = nested ? r.object("text_config") : r;
  const std::string tw = nested ? where + ": text_config" : where;

  ModelConfig c;
  auto size = [&](const char* key, int fallback) { return t.integer<int>(key, fallback, 1, kMaxInt); };
  c.vocab_size = size("vocab_size", c.vocab_size);
  c.hidden_size = size("hidden_size", c.hidden_size);
  c.intermediate_size = size("intermediate_size", c.intermediate_size);
  c.num_layers = size("num_hidden_layers", c.num_layers);
  c.num_heads = size("num_attention_heads", c.num_heads);
  c.num_kv_heads = size("num_key_value_heads", c.num_kv_heads);
  c.head_dim = size("head_dim", c.head_dim);
  c.global_head_dim = size("global_head_dim", c.global_head_dim);
  c.num_global_kv_heads = size("num_global_key_value_heads", c.num_kv_heads);
  c.num_experts = t.required_integer<int>("num_experts", 1, kMaxInt);
  c.top_k = t.required_integer<int>("top_k_experts", 1, kMaxInt);
  c.moe_intermediate_size = t.required_integer<int>("moe_intermediate_size", 1, kMaxInt);
  c.sliding_window = size("sliding_window", c.sliding_window);
  c.rms_norm_eps = positive_number(t, "rms_norm_eps", c.rms_norm_eps);
  c.final_logit_softcapping = positive_number(t, "final_logit_softcapping", c.final_logit_softcapping);
  c.pad_token_id = t.integer<int>("pad_token_id", c.pad_token_id, 0, kMaxInt);
  c.bos_token_id = t.integer<int>("bos_token_id", c.bos_token_id, 0, kMaxInt);
  if (t.has("eos_token_id")) c.eos_token_ids = int_or_list(t, "eos_token_id");
  if (nested) {
    c.canvas_length = r.integer<int>("canvas_length", c.canvas_length, 1, kMaxInt);
    if (r.has("eos_token_id")) c.eos_token_ids = int_or_list(r, "eos_token_id");
  }
  if (const std::string act = t.string("hidden_activation", "gelu_pytorch_tanh"); act != "gelu_pytorch_tanh")
    fail_config("{}: hidden_activation '{}' is not supported (gelu_pytorch_tanh)", tw, act);
  if (const json* bi = t.find("use_bidirectional_attention")) {  // null, false, "vision" or "all"
    if (!bi->is_string() && !bi->is_boolean())
      fail_config("{}: '{}' must be a string or a boolean, got {}", where, t.key("use_bidirectional_attention"),
                  bi->dump());
    if (*bi == "all")
      fail_config("{}: use_bidirectional_attention 'all' (a non-causal text encoder) is not supported", tw);
  }
  const bool tied_text = t.boolean("tie_word_embeddings", true);
  const bool tied_top = nested ? r.boolean("tie_word_embeddings", true) : true;
  if (!tied_text || !tied_top)
    fail_config("{}: tie_word_embeddings false is not supported (the LM head is the embedding)", where);

  if (c.top_k > c.num_experts)
    fail_config("{}: top_k_experts {} exceeds num_experts {}", tw, c.top_k, c.num_experts);

  // layer_types: given, or the 5:1 sliding/full pattern.
  if (const json* lt = t.find("layer_types")) {
    if (!lt->is_array() || static_cast<int>(lt->size()) != c.num_layers)
      fail_config("{}: 'layer_types' must list num_hidden_layers = {} entries", tw, c.num_layers);
    for (std::size_t i = 0; i < lt->size(); ++i) {
      const std::string s = json_string((*lt)[i], where, fmt::format("{}[{}]", t.key("layer_types"), i));
      if (s == "sliding_attention") c.layer_types.push_back(LayerType::Sliding);
      else if (s == "full_attention") c.layer_types.push_back(LayerType::Full);
      else fail_config("{}: 'layer_types' entry {} is neither sliding_attention nor full_attention", tw, s);
    }
  } else {
    for (int i = 0; i < c.num_layers; ++i)
      c.layer_types.push_back((i + 1) % 6 == 0 ? LayerType::Full : LayerType::Sliding);
  }
  // The reference forces the last layer to full attention; a config saying otherwise is inconsistent.
  if (c.layer_types.back() != LayerType::Full)
    fail_config("{}: 'layer_types' must end with full_attention (the reference forces it)", tw);

  if (t.has("rope_parameters")) {  // keyed by layer type
    const JsonFields rp = t.object("rope_parameters");
    if (rp.has("sliding_attention")) c.rope_sliding = parse_rope(rp.object("sliding_attention"), c.rope_sliding);
    if (rp.has("full_attention")) c.rope_full = parse_rope(rp.object("full_attention"), c.rope_full);
  }

  // Older revision: full layers take global_head_dim / num_global_key_value_heads. Newer revision:
  // per_layer_config lists the overrides and every layer not listed keeps head_dim / num_key_value_heads.
  const bool has_per_layer = t.has("per_layer_config");
  for (int i = 0; i < c.num_layers; ++i) {
    LayerSpec s;
    s.type = c.layer_types[static_cast<std::size_t>(i)];
    const bool full = s.type == LayerType::Full;
    s.head_dim = full && !has_per_layer ? c.global_head_dim : c.head_dim;
    s.num_kv_heads = full && !has_per_layer ? c.num_global_kv_heads : c.num_kv_heads;
    s.has_v_proj = !full;
    s.window = full ? 0 : c.sliding_window;
    s.rope = full ? c.rope_full : c.rope_sliding;
    c.layers.push_back(s);
  }
  if (has_per_layer) {  // {"<layer>": {"head_dim": .., "num_key_value_heads": ..}}
    const JsonFields pl = t.object("per_layer_config");
    for (const auto& [k, v] : pl.value().items()) {
      int idx = -1;
      try {
        std::size_t used = 0;
        idx = std::stoi(k, &used);
        if (used != k.size()) idx = -1;
      } catch (const std::exception&) {
      }
      if (idx < 0 || idx >= c.num_layers)
        fail_config("{}: per_layer_config key '{}' is not a layer index below {}", tw, k, c.num_layers);
      const JsonFields lf = pl.object(k);
      LayerSpec& s = c.layers[static_cast<std::size_t>(idx)];
      s.head_dim = lf.integer<int>("head_dim", s.head_dim, 1, kMaxInt);
      s.num_kv_heads = lf.integer<int>("num_key_value_heads", s.num_kv_heads, 1, kMaxInt);
    }
  }
  for (int i = 0; i < c.num_layers; ++i) {
    const LayerSpec& s = c.layers[static_cast<std::size_t>(i)];
    if (s.head_dim <= 0 || s.head_dim % 2 != 0)
      fail_config("{}: layer {} head_dim {} must be positive and even (rotate-half RoPE)", tw, i, s.head_dim);
    if (s.num_kv_heads <= 0 || c.num_heads % s.num_kv_heads != 0)
      fail_config("{}: layer {} has {} KV heads, which must divide num_attention_heads {}", tw, i, s.num_kv_heads,
                  c.num_heads);
  }
  return c;
}

std::optional<VisionConfig> parse_vision_config(const json& top, const ModelConfig& text, const std::string& where) {
  if (!top.is_object()) fail_config("{}: the configuration must be a JSON object", where);
  const JsonFields r(top, where);
  if (!r.has("text_config")) return std::nullopt;
  VisionConfig v;
  v.text_hidden_size = text.hidden_size;
  v.projector_initializer_range = positive_number(r, "initializer_range", v.projector_initializer_range);
  if (!r.has("vision_config")) return v;
  const JsonFields f = r.object("vision_config");
  if (const std::string type = f.string("model_type", "gemma4_vision"); type != "gemma4_vision")
    fail_config("{}: '{}' is '{}'; the vision tower dgemma can write is gemma4_vision", where, f.key("model_type"), type);
  auto size = [&](const char* key, int fallback) { return f.integer<int>(key, fallback, 1, kMaxInt); };
  v.hidden_size = size("hidden_size", v.hidden_size);
  v.intermediate_size = size("intermediate_size", v.intermediate_size);
  v.num_layers = f.integer<int>("num_hidden_layers", v.num_layers, 0, kMaxInt);
  v.num_heads = size("num_attention_heads", v.num_heads);
  v.num_kv_heads = size("num_key_value_heads", v.num_kv_heads);
  v.head_dim = size("head_dim", v.head_dim);
  v.patch_size = size("patch_size", v.patch_size);
  v.position_embedding_size = size("position_embedding_size", v.position_embedding_size);
  v.output_dims = f.integer<int>("output_proj_dims", 0, 1, kMaxInt);
  v.use_clipped_linears = f.boolean("use_clipped_linears", v.use_clipped_linears);
  v.standardize = f.boolean("standardize", v.standardize);
  v.initializer_range = positive_number(f, "initializer_range", v.initializer_range);
  return v;
}

ModelConfig load_model_config(const std::string& path) {
  namespace fs = std::filesystem;
  const std::string file = fs::is_directory(path) ? (fs::path(path) / "config.json").string() : path;
  std::ifstream in(file, std::ios::binary);
  if (!in) fail_config("cannot read model config {}", file);
  std::stringstream text;
  text << in.rdbuf();
  return parse_model_config(parse_json_strict(text.str(), file), file);
}

void check_generation_config(const json& j, const std::string& file) {
  const JsonFields g(j, file);
  g.integer<int>("max_new_tokens", 1, 1, kMaxInt);
  g.integer<int>("max_length", 1, 1, kMaxInt);
  g.integer<int>("max_denoising_steps", 1, 1, kMaxInt);
  g.integer<int>("stability_threshold", 0, 0, kMaxInt);
  for (const char* key : {"t_min", "t_max", "confidence_threshold"}) g.number(key, 0);
  for (const char* key : {"pad_token_id", "bos_token_id"}) g.integer<int>(key, 0, 0, kMaxInt);
  if (g.has("eos_token_id")) int_or_list(g, "eos_token_id");
  if (g.has("sampler_config")) g.object("sampler_config").number("entropy_bound", 0);
}

}  // namespace dg
