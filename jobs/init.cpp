// `dgemma init`: a randomly initialised model written as a Hugging Face directory, tensor by tensor
// (memory stays at one tensor, so the 26B shape works too). The values depend only on the seed. The model
// is complete: the text model (--init-std) and the vision tower with its projector that the config implies
// (layers/vision.h, initialised as HF's _init_weights does), so transformers loads it with nothing missing.
#include <filesystem>

#include "jobs/log.h"
#include "io/builtin.h"
#include "io/hf_config.h"
#include "io/hf_model.h"
#include "io/hf_names.h"
#include "io/hf_writer.h"
#include "io/presets.h"
#include "io/safetensors.h"
#include "jobs/jobs.h"
#include "layers/init.h"

namespace dg {

void init_options(po::options_description& d) {
  d.add_options()
      ("model-config", po::value<std::string>()->value_name("FILE"), "the model's config.json (or an HF model directory)")
      ("preset", po::value<std::string>()->value_name("NAME"), "a built-in config instead: tiny, diffusiongemma-26b-a4b")
      ("out", po::value<std::string>()->value_name("DIR"), "output HF directory (must not exist unless --overwrite)")
      ("seed", po::value<std::uint64_t>()->default_value(0), "random seed")
      ("dtype", po::value<std::string>()->default_value("bf16"), "stored dtype: bf16 or f32")
      ("init-std", po::value<double>()->default_value(0.02, "0.02"), "std of the text model's normal init (the vision tower takes the config's initializer_range values, as HF)")
      ("max-shard-size", po::value<std::string>()->default_value("50GB"), "shard size limit (e.g. 5GB, 500MB; default as transformers 5 save_pretrained)")
      ("tokenizer", po::value<std::string>()->value_name("DIR"), "copy tokenizer.json, tokenizer_config.json and chat_template.jinja from DIR (default for --preset tiny: the built-in tokenizer)")
      ("overwrite", po::bool_switch(), "replace an existing output directory");
}

namespace {

// A fill of write_hf_dir: the values gen(begin, count, dst) makes, 1M elements at a time, stored as `dtype`
// (memory stays at one tensor, so the 26B shape works too).
std::function<void(std::byte*, std::size_t)> generated(
    Shape shape, DType dtype, std::function<void(std::int64_t, std::int64_t, float*)> gen) {
  return [shape = std::move(shape), dtype, gen = std::move(gen)](std::byte* dst, std::size_t) {
    constexpr std::int64_t kChunk = 1 << 20;
    std::vector<float> buf(static_cast<std::size_t>(kChunk));
    const std::int64_t total = shape_numel(shape);
    const std::size_t es = dtype_size(dtype);
    for (std::int64_t b = 0; b < total; b += kChunk) {
      const std::int64_t m = std::min(kChunk, total - b);
      gen(b, m, buf.data());
      encode_f32(buf.data(), {m}, false, dtype, dst + static_cast<std::size_t>(b) * es);
    }
  };
}

// The text model's tensors (HF names and layouts), tensor indices 0, 1, ...; returns their elements.
std::uint64_t add_text_tensors(const ModelConfig& c, DType dtype, std::uint64_t seed, float std_dev,
                               std::vector<HfOutTensor>& out) {
  std::uint64_t index = 0, params = 0;
  for (const ParamSpec& p : model_params(c)) {
    const HfName n = native_to_hf(p.name);
    Shape shape = p.shape;
    if (n.transposed) std::swap(shape[shape.size() - 1], shape[shape.size() - 2]);
    params += static_cast<std::uint64_t>(shape_numel(shape));
    out.push_back({n.name, std::string(safetensors_dtype(dtype).name), shape,
                   generated(shape, dtype,
                             [name = p.name, ti = index++, seed, std_dev](std::int64_t b, std::int64_t m, float* dst) {
                               init_parameter(name, seed, ti, std_dev, b, m, dst);
                             })});
  }
  return params;
}

// The vision tower and its projector as HF's _init_weights makes them (their own initializer_range values),
// tensor indices from `first_index` on (layers/init.h); returns their elements.
std::uint64_t add_vision_tensors(const VisionConfig& v, DType dtype, std::uint64_t seed, std::uint64_t first_index,
                                 std::vector<HfOutTensor>& out) {
  std::uint64_t index = first_index, elements = 0;
  for (const CarriedSpec& s : vision_params(v)) {
    elements += static_cast<std::uint64_t>(shape_numel(s.shape));
    out.push_back({s.name, std::string(safetensors_dtype(dtype).name), s.shape,
                   generated(s.shape, dtype, [s, ti = index++, seed](std::int64_t b, std::int64_t m, float* dst) {
                     init_carried(s, seed, ti, b, m, dst);
                   })});
  }
  return elements;
}

}  // namespace

int init_run(JobContext& ctx) {
  const auto& vm = ctx.vm;
  if (!vm.count("out")) fail_config("init: --out DIR is required");
  if (vm.count("model-config") == vm.count("preset")) fail_config("init: give exactly one of --model-config and --preset");
  const std::string dtype_name_opt = vm["dtype"].as<std::string>();
  if (dtype_name_opt != "bf16" && dtype_name_opt != "f32") fail_config("init: --dtype must be bf16 or f32");
  const DType dtype = dtype_name_opt == "bf16" ? DType::BF16 : DType::F32;

  nlohmann::json config_json;
  std::string where;
  if (vm.count("preset")) {
    config_json = preset_config(vm["preset"].as<std::string>());
    where = "preset " + vm["preset"].as<std::string>();
  } else {
    std::string f = vm["model-config"].as<std::string>();
    if (std::filesystem::is_directory(f)) f = (std::filesystem::path(f) / "config.json").string();
    config_json = read_json_file(f);
    where = f;
  }
  config_json["dtype"] = dtype == DType::BF16 ? "bfloat16" : "float32";
  const ModelConfig c = parse_model_config(config_json, where);
  HfDirOptions opts;
  opts.overwrite = vm["overwrite"].as<bool>();
  opts.max_shard_size = parse_byte_size(vm["max-shard-size"].as<std::string>());
  if (vm.count("tokenizer")) {
    const std::filesystem::path t(vm["tokenizer"].as<std::string>());
    for (const char* f : {"tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "special_tokens_map.json"})
      if (std::filesystem::exists(t / f)) opts.extra_files.push_back((t / f).string());
    if (opts.extra_files.empty()) fail_config("init: no tokenizer.json in {}", t.string());
  } else if (vm.count("preset") && vm["preset"].as<std::string>() == "tiny") {
    opts.extra_contents = builtin_tokenizer_files();
  }
  if (ctx.rt.rank != 0) return 0;  // one writer; the others have nothing to do

  const std::uint64_t seed = vm["seed"].as<std::uint64_t>();
  std::vector<HfOutTensor> tensors;
  const std::uint64_t params = add_text_tensors(c, dtype, seed, static_cast<float>(vm["init-std"].as<double>()), tensors);
  std::uint64_t vision = 0;
  if (const std::optional<VisionConfig> v = parse_vision_config(config_json, c, where))
    vision = add_vision_tensors(*v, dtype, seed, tensors.size(), tensors);
  log::info("init: {} ({}), {} tensors: {:.3f} B text-model parameters, {:.3f} M in the vision tower and its "
            "projector; {} -> {}", where, c.summary(), tensors.size(), static_cast<double>(params) * 1e-9,
            static_cast<double>(vision) * 1e-6, dtype_name(dtype), vm["out"].as<std::string>());
  const nlohmann::json gen = default_generation_config(config_json);
  write_hf_dir(vm["out"].as<std::string>(), config_json, &gen, tensors, opts);
  log::info("init: wrote {}", vm["out"].as<std::string>());
  return 0;
}

}  // namespace dg
