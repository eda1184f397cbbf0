#include "io/hf_writer.h"

#include <algorithm>
#include <array>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>

#include "io/atomic_file.h"
#include "io/hf_names.h"
#include "io/safetensors.h"
#include "io/transpose.h"

namespace dg {

namespace fs = std::filesystem;

namespace {

void encode_f32_plain(const float* src, std::int64_t n, DType dtype, std::byte* dst) {
  for (std::int64_t i = 0; i < n; ++i) {
    const float v = src[i];
    switch (dtype) {
      case DType::F32: std::memcpy(dst + 4 * i, &v, 4); break;
      case DType::BF16: {
        const std::uint16_t h = f32_to_bf16_bits(v);
        std::memcpy(dst + 2 * i, &h, 2);
        break;
      }
      case DType::F16: {
        const std::uint16_t h = f32_to_f16_bits(v);
        std::memcpy(dst + 2 * i, &h, 2);
        break;
      }
      default: fail("encode_f32: unsupported output dtype {}", dtype_name(dtype));
    }
  }
}

}  // namespace

void encode_f32(const float* src, const Shape& shape, bool transpose, DType dtype, std::byte* dst) {
  const std::int64_t n = shape_numel(shape);
  if (!transpose || n == 0) return encode_f32_plain(src, n, dtype, dst);
  // Encode in the source order, then the one transpose of io/transpose.h ([.., a, b] -> [.., b, a]).
  std::vector<std::byte> encoded(static_cast<std::size_t>(n) * dtype_size(dtype));
  encode_f32_plain(src, n, dtype, encoded.data());
  transpose_last2(encoded.data(), shape, dtype_size(dtype), dst);
}

std::vector<HfOutTensor> hf_tensors_of(const ModelConfig& c, const ModelWeights& w, DType dtype) {
  std::vector<HfOutTensor> out;
  const std::string ds(safetensors_dtype(dtype).name);
  for (const NamedTensor& t : model_tensors(c, w)) {
    const HfName n = native_to_hf(t.name);
    Shape shape = t.tensor.shape();
    if (n.transposed) std::swap(shape[shape.size() - 1], shape[shape.size() - 2]);
    const Tensor src = t.tensor;
    out.push_back({n.name, ds, shape, [src, n, dtype](std::byte* dst, std::size_t) {
                     encode_f32(src.data<float>(), src.shape(), n.transposed, dtype, dst);
                   }});
  }
  return out;
}

void write_hf_dir(const std::string& dir, const nlohmann::json& config, const nlohmann::json* generation_config,
                  const std::vector<HfOutTensor>& tensors, const HfDirOptions& opts) {
  const fs::path final_dir = fs::path(dir).lexically_normal();
  if (final_dir.empty() || final_dir.filename().empty()) fail_config("output directory '{}' is not a directory name", dir);
  if (fs::exists(final_dir) && !opts.overwrite)
    fail_config("output directory {} already exists (use --overwrite to replace it)", final_dir.string());
  const fs::path parent = final_dir.has_parent_path() ? final_dir.parent_path() : fs::path(".");
  if (!fs::is_directory(parent)) fail_config("the parent of the output directory, {}, does not exist", parent.string());
  const fs::path tmp = final_dir.string() + ".tmp";
  std::error_code ec;
  fs::remove_all(tmp, ec);  // a leftover from a crashed run
  if (!fs::create_directory(tmp, ec)) fail("cannot create {}: {}", tmp.string(), ec.message());

  write_file_atomic((tmp / "config.json").string(), config.dump(2) + "\n", false);
  if (generation_config)
    write_file_atomic((tmp / "generation_config.json").string(), generation_config->dump(2) + "\n", false);
  for (const std::string& f : opts.extra_files) {
    std::ifstream in(f, std::ios::binary);
    if (!in) fail_config("cannot read {}", f);
    std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    write_file_atomic((tmp / fs::path(f).filename()).string(), bytes, false);
  }

  for (const auto& [name, bytes] : opts.extra_contents) write_file_atomic((tmp / name).string(), bytes, false);

  std::vector<TensorSpec> specs;
  for (const HfOutTensor& t : tensors) specs.push_back({t.name, t.dtype, t.shape});
  hf_state_dict_order(specs);  // the split follows save_pretrained's order; each file sorts its own tensors
  const std::uint64_t params = hf_num_parameters(specs);
  ShardedSafetensorsWriter writer(tmp.string(), specs, opts.max_shard_size);
  std::vector<std::byte> buf;
  for (const HfOutTensor& t : tensors) {
    const SafetensorsDType* d = find_safetensors_dtype(t.dtype);
    DG_CHECK(d != nullptr, "unknown dtype {} for {}", t.dtype, t.name);
    const std::size_t nbytes = static_cast<std::size_t>((shape_numel(t.shape) * d->bits + 7) / 8);
    buf.assign(nbytes, std::byte{0});
    t.fill(buf.data(), nbytes);
    writer.write(t.name, buf.data(), nbytes);
  }
  buf.clear();
  buf.shrink_to_fit();
  writer.finish(opts.total_parameters ? opts.total_parameters : std::optional<std::uint64_t>(params));

  if (fs::exists(final_dir)) {  // overwrite: swap in the complete new directory, then drop the old one
    const fs::path old = final_dir.string() + ".old";
    fs::remove_all(old, ec);
    fs::rename(final_dir, old);
    fs::rename(tmp, final_dir);
    fs::remove_all(old, ec);
  } else {
    fs::rename(tmp, final_dir);
  }
  fsync_directory(parent.string());
}

// ---- shard layouts ------------------------------------------------------------------------------------
namespace {

// Position of `rest` in `known`, or known.size() (unknown names after the known ones).
int rank_in(std::string_view rest, std::initializer_list<std::string_view> known) {
  int i = 0;
  for (std::string_view k : known) {
    if (rest == k) return i;
    ++i;
  }
  return i;
}

// "L.rest" after a layers prefix: {L, rest}; {-1, ""} when not a layer tensor.
std::pair<long, std::string_view> layer_of(std::string_view name, std::string_view prefix) {
  if (!name.starts_with(prefix)) return {-1, {}};
  name.remove_prefix(prefix.size());
  const auto dot = name.find('.');
  if (dot == 0 || dot == std::string_view::npos) return {-1, {}};
  long l = 0;
  for (char ch : name.substr(0, dot)) {
    if (ch < '0' || ch > '9') return {-1, {}};
    l = l * 10 + (ch - '0');
  }
  return {l, name.substr(dot + 1)};
}

// Inside a vision encoder layer: its modules in registration order and, inside a Gemma4ClippableLinear, the
// clip buffers (use_clipped_linears) before the inner linear's weight.
int vision_layer_rank(std::string_view rest) {
  static constexpr std::string_view modules[] = {
      "self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj", "self_attn.q_norm",
      "self_attn.k_norm", "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj", "input_layernorm",
      "post_attention_layernorm", "pre_feedforward_layernorm", "post_feedforward_layernorm"};
  static constexpr std::string_view parts[] = {"input_min", "input_max", "output_min", "output_max", "linear.weight",
                                               "weight"};
  constexpr int kParts = static_cast<int>(std::size(parts));
  for (int m = 0; m < static_cast<int>(std::size(modules)); ++m) {
    const std::string_view mod = modules[m];
    if (rest.size() <= mod.size() || !rest.starts_with(mod) || rest[mod.size()] != '.') continue;
    const std::string_view tail = rest.substr(mod.size() + 1);
    for (int p = 0; p < kParts; ++p)
      if (tail == parts[p]) return m * kParts + p;
  }
  return static_cast<int>(std::size(modules)) * kParts;  // unknown: after the known ones
}

// The registration order of the modules of DiffusionGemmaForBlockDiffusion (transformers 5.23), which
// state_dict() follows: the encoder's own layer_scalar buffers (its other text tensors are tied to the
// decoder's and not saved), the vision tower and its projector, the decoder, then anything else.
std::array<long, 4> state_dict_rank(std::string_view n) {
  if (auto [l, rest] = layer_of(n, "model.encoder.language_model.layers."); l >= 0)
    return {0, l, rest == "layer_scalar" ? 0 : 1, 0};
  if (n.starts_with("model.encoder.vision_tower.")) {
    n.remove_prefix(std::string_view("model.encoder.vision_tower.").size());
    if (n == "std_bias" || n == "std_scale") return {1, 0, n == "std_bias" ? 0 : 1, 0};  // the tower's own buffers
    if (auto [l, rest] = layer_of(n, "encoder.layers."); l >= 0) return {1, 2, l, vision_layer_rank(rest)};
    if (n.starts_with("patch_embedder."))
      return {1, 1, rank_in(n, {"patch_embedder.position_embedding_table", "patch_embedder.input_proj.weight"}), 0};
    return {1, 3, 0, 0};
  }
  if (n.starts_with("model.encoder.")) return {2, 0, 0, 0};  // embed_vision and the rest of the encoder
  if (n == "model.decoder.embed_tokens.weight") return {3, 0, 0, 0};
  if (auto [l, rest] = layer_of(n, "model.decoder.layers."); l >= 0)
    return {4, l, rank_in(rest, {"layer_scalar", "self_attn.q_proj.weight", "self_attn.k_proj.weight",
                                 "self_attn.v_proj.weight", "self_attn.o_proj.weight", "self_attn.q_norm.weight",
                                 "self_attn.k_norm.weight", "mlp.gate_proj.weight", "mlp.up_proj.weight",
                                 "mlp.down_proj.weight", "input_layernorm.weight", "post_attention_layernorm.weight",
                                 "pre_feedforward_layernorm.weight", "post_feedforward_layernorm.weight", "router.scale",
                                 "router.per_expert_scale", "router.proj.weight", "experts.gate_up_proj",
                                 "experts.down_proj", "post_feedforward_layernorm_1.weight",
                                 "post_feedforward_layernorm_2.weight", "pre_feedforward_layernorm_2.weight"}), 0};
  if (n == "model.decoder.norm.weight") return {5, 0, 0, 0};
  if (n.starts_with("model.decoder.self_conditioning."))
    return {6, rank_in(n.substr(std::string_view("model.decoder.self_conditioning.").size()),
                       {"pre_norm.weight", "gate_proj.weight", "up_proj.weight", "down_proj.weight"}), 0, 0};
  if (n.starts_with("model.decoder.")) return {7, 0, 0, 0};
  return {8, 0, 0, 0};
}

std::map<std::string, std::string> string_map(const nlohmann::json& j, const std::string& what) {
  std::map<std::string, std::string> m;
  if (!j.is_object()) fail_config("{}: hf_layout: __metadata__ is not an object", what);
  for (const auto& [k, v] : j.items()) {
    if (!v.is_string()) fail_config("{}: hf_layout: __metadata__ entry \"{}\" is not a string", what, k);
    m.emplace(k, v.get<std::string>());
  }
  return m;
}

// The persistent buffers save_pretrained writes that num_parameters() does not count: the layer scalars,
// the vision tower's standardisation and the clip bounds of its clippable linears.
bool is_hf_buffer(std::string_view name) {
  if (name == "layer_scalar" || name.ends_with(".layer_scalar")) return true;
  if (!name.starts_with("model.encoder.vision_tower.")) return false;
  for (std::string_view b : {".std_bias", ".std_scale", ".input_min", ".input_max", ".output_min", ".output_max"})
    if (name.ends_with(b)) return true;
  return false;
}

}  // namespace

void hf_state_dict_order(std::vector<TensorSpec>& tensors) {
  std::stable_sort(tensors.begin(), tensors.end(), [](const TensorSpec& a, const TensorSpec& b) {
    return state_dict_rank(a.name) < state_dict_rank(b.name);
  });
}

std::uint64_t hf_num_parameters(const std::vector<TensorSpec>& tensors) {
  std::uint64_t n = 0;
  for (const TensorSpec& t : tensors) {
    const std::string_view name = t.name;
    if (is_hf_buffer(name)) continue;
    n += static_cast<std::uint64_t>(shape_numel(t.shape));
  }
  return n;
}

HfShardLayout save_pretrained_layout(std::vector<TensorSpec> tensors, std::uint64_t max_shard_size) {
  hf_state_dict_order(tensors);
  HfShardLayout l;
  l.plan = plan_shards(tensors, max_shard_size);
  l.file_options.assign(l.plan.files.size(), SafetensorsWriteOptions{});
  if (l.plan.sharded())
    l.index_text = shard_index_json_with_metadata(
        l.plan, nlohmann::json{{"total_parameters", hf_num_parameters(tensors)}, {"total_size", l.plan.total_size}});
  return l;
}

nlohmann::json hf_layout_of(const ShardedSafetensors& files) {
  nlohmann::json out;
  out["files"] = nlohmann::json::array();
  ShardPlan plan;  // to regenerate the index
  for (const SafetensorsFile& f : files.files()) {
    nlohmann::json jf;
    jf["name"] = files.sharded() ? fs::path(f.path()).lexically_relative(fs::path(files.path()).parent_path()).string()
                                 : std::string(kSafetensorsSingleName);
    jf["metadata"] = f.metadata() ? nlohmann::json(*f.metadata()) : nlohmann::json();
    jf["tensors"] = nlohmann::json::array();
    std::vector<TensorSpec> specs;
    for (const SafetensorsEntry& e : f.entries()) {
      jf["tensors"].push_back(nlohmann::json::array({e.name, e.dtype}));
      specs.push_back(e.spec());
      plan.weight_map.emplace(e.name, jf["name"].get<std::string>());
      plan.total_size += e.nbytes();
    }
    const std::vector<SafetensorsEntry> layout = plan_safetensors_layout(specs, f.path(), /*keep_order=*/true);
    if (safetensors_header_json(layout, f.metadata()) != f.header_text()) jf["header"] = std::string(f.header_text());
    out["files"].push_back(std::move(jf));
  }
  if (!files.sharded()) {
    out["index"] = nullptr;
    return out;
  }
  const nlohmann::json index = nlohmann::json::parse(files.index_text());
  out["index"]["metadata"] = index.contains("metadata") ? index.at("metadata") : nlohmann::json();
  if (shard_index_json_with_metadata(plan, out["index"]["metadata"]) != files.index_text())
    out["index"]["text"] = files.index_text();
  return out;
}

std::optional<HfShardLayout> recorded_hf_layout(const nlohmann::json& layout, const std::vector<TensorSpec>& tensors,
                                                const std::string& what, std::string& why) {
  std::map<std::string, const TensorSpec*> wanted;
  for (const TensorSpec& t : tensors) wanted.emplace(t.name, &t);
  HfShardLayout l;
  bool same_dtypes = true;
  try {
    for (const nlohmann::json& jf : layout.at("files")) {
      const std::string name = jf.at("name").get<std::string>();
      std::vector<TensorSpec> specs;
      for (const nlohmann::json& jt : jf.at("tensors")) {
        const std::string t = jt.at(0).get<std::string>();
        const auto it = wanted.find(t);
        if (it == wanted.end()) {
          why = fmt::format("the recorded layout has tensor '{}' ({}), which is not exported", t, name);
          return std::nullopt;
        }
        if (it->second->dtype != jt.at(1).get<std::string>()) same_dtypes = false;
        specs.push_back(*it->second);
        l.plan.weight_map.emplace(t, name);
        wanted.erase(it);
      }
      SafetensorsWriteOptions o;
      o.keep_order = true;
      o.metadata = jf.at("metadata").is_null() ? std::nullopt : std::optional(string_map(jf.at("metadata"), what));
      l.plan.files.push_back(name);
      l.plan.tensors.push_back(std::move(specs));
      l.file_options.push_back(std::move(o));
      if (jf.contains("header")) l.file_options.back().header = jf.at("header").get<std::string>();
    }
    if (!wanted.empty()) {
      why = fmt::format("tensor '{}' is not in the recorded layout ({} missing in all)", wanted.begin()->first, wanted.size());
      return std::nullopt;
    }
    for (const auto& specs : l.plan.tensors)
      for (const SafetensorsEntry& e : plan_safetensors_layout(specs, what, true)) l.plan.total_size += e.nbytes();
    for (SafetensorsWriteOptions& o : l.file_options)
      if (!same_dtypes) o.header.reset();  // a verbatim header names the recorded dtypes and offsets
    const nlohmann::json& index = layout.at("index");
    if (index.is_null()) {
      if (l.plan.files.size() != 1) fail_config("{}: hf_layout: {} files and no index", what, l.plan.files.size());
      return l;
    }
    if (same_dtypes && index.contains("text")) {
      l.index_text = index.at("text").get<std::string>();
    } else {
      nlohmann::json meta = index.at("metadata");
      if (meta.is_object() && meta.contains("total_size")) meta["total_size"] = l.plan.total_size;
      l.index_text = shard_index_json_with_metadata(l.plan, meta);
    }
  } catch (const nlohmann::json::exception& e) {
    fail_config("{}: malformed hf_layout section: {}", what, e.what());
  }
  return l;
}

}  // namespace dg
