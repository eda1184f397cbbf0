// config.json parsing: the released 26B layout, the tiny test layouts of both config revisions, HF's
// omitted defaults, and the errors for missing, mistyped and inconsistent keys.
#include <doctest/doctest.h>

#include "io/hf_config.h"
#include "io/strict_json.h"
#include "layers/error.h"

using namespace dg;
using nlohmann::json;

namespace {

json released_26b() {
  return json::parse(R"({
    "architectures": ["DiffusionGemmaForBlockDiffusion"], "model_type": "diffusion_gemma",
    "canvas_length": 256, "eos_token_id": [1, 106], "boi_token_id": 255999,
    "vision_config": {"model_type": "gemma4_vision", "hidden_size": 1152},
    "text_config": {
      "model_type": "diffusion_gemma_text", "hidden_size": 2816, "intermediate_size": 2112,
      "num_hidden_layers": 30, "num_attention_heads": 16, "num_key_value_heads": 8,
      "num_global_key_value_heads": 2, "global_head_dim": 512, "head_dim": 256,
      "num_experts": 128, "top_k_experts": 8, "moe_intermediate_size": 704, "sliding_window": 1024,
      "max_position_embeddings": 262144, "use_bidirectional_attention": "vision",
      "rope_parameters": {
        "full_attention": {"partial_rotary_factor": 0.25, "rope_theta": 1000000.0, "rope_type": "proportional"},
        "sliding_attention": {"rope_theta": 10000.0, "rope_type": "default"}},
      "some_future_key": {"tolerated": true}
    }})");
}

json tiny_per_layer() {  // the newer revision's layout of the HF test model
  return json::parse(R"({"model_type": "diffusion_gemma", "canvas_length": 16, "text_config": {
      "vocab_size": 99, "hidden_size": 32, "num_attention_heads": 2, "num_key_value_heads": 2,
      "intermediate_size": 32, "moe_intermediate_size": 8, "num_experts": 4, "top_k_experts": 2,
      "num_hidden_layers": 2, "layer_types": ["sliding_attention", "full_attention"],
      "per_layer_config": {"1": {"head_dim": 16, "num_key_value_heads": 2}}}})");
}

}  // namespace

TEST_CASE("the released 26B config resolves to the documented per-layer shapes") {
  const ModelConfig c = parse_model_config(released_26b(), "config.json");
  CHECK(c.hidden_size == 2816);
  CHECK(c.vocab_size == 262144);  // omitted: HF default
  CHECK(c.num_layers == 30);
  CHECK(c.canvas_length == 256);
  CHECK(c.eos_token_ids == std::vector<int>{1, 106});
  int full = 0;
  for (int i = 0; i < 30; ++i) {
    const LayerSpec& s = c.layer(i);
    const bool expect_full = i % 6 == 5;  // 5, 11, 17, 23, 29
    CHECK((s.type == LayerType::Full) == expect_full);
    full += expect_full;
    CHECK(s.head_dim == (expect_full ? 512 : 256));
    CHECK(s.num_kv_heads == (expect_full ? 2 : 8));
    CHECK(s.has_v_proj == !expect_full);
    CHECK(s.window == (expect_full ? 0 : 1024));
    CHECK(s.rope_angles() == (expect_full ? 64 : 128));
    CHECK(s.rope.theta == (expect_full ? 1e6 : 1e4));
  }
  CHECK(full == 5);
  CHECK(c.embed_scale() == doctest::Approx(53.0660).epsilon(1e-5));
  CHECK(c.summary().find("25 sliding, 5 full") != std::string::npos);
}

TEST_CASE("both config revisions of the tiny model give the same layers") {
  const ModelConfig a = parse_model_config(tiny_per_layer(), "new.json");
  json old = tiny_per_layer();
  old["text_config"].erase("per_layer_config");
  old["text_config"]["global_head_dim"] = 16;
  old["text_config"]["num_global_key_value_heads"] = 2;
  const ModelConfig b = parse_model_config(old, "old.json");
  for (const ModelConfig* c : {&a, &b}) {
    CHECK(c->layer(0).head_dim == 256);  // sliding layers keep the default head_dim even with H = 32
    CHECK(c->layer(1).head_dim == 16);
    CHECK(c->layer(1).num_kv_heads == 2);
    CHECK(c->layer(1).rope_angles() == 2);  // int(0.25 * 16 // 2)
    CHECK(c->layer(0).window == 512);
  }
}

TEST_CASE("missing, mistyped and inconsistent keys are errors naming the key and file") {
  auto expect_error = [](json j, const char* needle) {
    CHECK_THROWS_WITH_AS(parse_model_config(j, "m/config.json"), doctest::Contains(needle), ConfigError);
    CHECK_THROWS_WITH_AS(parse_model_config(j, "m/config.json"), doctest::Contains("m/config.json"), ConfigError);
  };
  json j = tiny_per_layer();
  j["text_config"].erase("num_experts");
  expect_error(j, "num_experts");
  j = tiny_per_layer();
  j["text_config"]["hidden_size"] = "32";
  expect_error(j, "'text_config.hidden_size' must be an integer");
  j = tiny_per_layer();
  j["text_config"]["top_k_experts"] = 5;
  expect_error(j, "top_k_experts 5 exceeds num_experts 4");
  j = tiny_per_layer();
  j["text_config"]["layer_types"] = {"sliding_attention"};
  expect_error(j, "layer_types");
  j = tiny_per_layer();
  j["text_config"]["layer_types"] = {"full_attention", "sliding_attention"};
  expect_error(j, "must end with full_attention");
  j = tiny_per_layer();
  j["text_config"]["layer_types"][0] = "local_attention";
  expect_error(j, "local_attention");
  j = tiny_per_layer();
  j["text_config"]["num_key_value_heads"] = 3;
  expect_error(j, "must divide num_attention_heads");
  j = tiny_per_layer();
  j["text_config"]["per_layer_config"]["7"] = json::object();
  expect_error(j, "per_layer_config key '7'");
  j = tiny_per_layer();
  j["text_config"]["rope_parameters"] = {{"full_attention", {{"rope_type", "yarn"}}}};
  expect_error(j, "rope_type 'yarn'");
  j = tiny_per_layer();
  j["model_type"] = "gemma3";
  expect_error(j, "gemma3");
  j = tiny_per_layer();
  j["text_config"]["use_bidirectional_attention"] = "all";
  expect_error(j, "use_bidirectional_attention");
  j = tiny_per_layer();
  j["canvas_length"] = 0;
  expect_error(j, "canvas_length");
  CHECK_THROWS_WITH_AS(load_model_config("no/such/dir/config.json"), doctest::Contains("no/such/dir"), ConfigError);
}

TEST_CASE("the config.json that HF save_pretrained wrote for the fixture model") {
  const ModelConfig c = load_model_config(DGEMMA_FIXTURES "/model/tiny6");
  CHECK(c.num_layers == 6);
  CHECK(c.canvas_length == 4);
  CHECK(c.eos_token_ids == std::vector<int>{1, 7});
  for (int i = 0; i < 5; ++i) {
    CHECK(c.layer(i).type == LayerType::Sliding);
    CHECK(c.layer(i).head_dim == 16);
    CHECK(c.layer(i).num_kv_heads == 2);
    CHECK(c.layer(i).window == 6);
    CHECK(c.layer(i).rope_angles() == 8);
  }
  CHECK(c.layer(5).type == LayerType::Full);
  CHECK(c.layer(5).head_dim == 32);
  CHECK(c.layer(5).num_kv_heads == 1);
  CHECK_FALSE(c.layer(5).has_v_proj);
  CHECK(c.layer(5).rope_angles() == 4);  // int(0.25 * 32 // 2)
}

TEST_CASE("integers are range-checked into their type, never narrowed; wrong types name the key and the type") {
  auto expect_error = [](const json& j, const std::string& needle) {
    CHECK_THROWS_WITH_AS(parse_model_config(j, "m/config.json"), doctest::Contains(("m/config.json: " + needle).c_str()),
                         ConfigError);
  };
  json j = tiny_per_layer();
  j["text_config"]["vocab_size"] = 4294969344ull;  // 2^32 + 2048: was read as 2048
  expect_error(j, "'text_config.vocab_size' must be an integer in [1, 2147483647], got 4294969344");
  j = tiny_per_layer();
  j["text_config"]["hidden_size"] = -1;
  expect_error(j, "'text_config.hidden_size' must be an integer in [1, 2147483647], got -1");
  j = tiny_per_layer();
  j["text_config"]["num_experts"] = json::parse("1e3");  // a float, even with an integral value
  expect_error(j, "'text_config.num_experts' must be an integer in [1, 2147483647], got 1000.0");
  j = tiny_per_layer();
  j["text_config"]["num_experts"] = 18446744073709551615ull;
  expect_error(j, "'text_config.num_experts' must be an integer in [1, 2147483647], got 18446744073709551615");
  j = tiny_per_layer();
  j["canvas_length"] = -4294967280ll;  // would wrap to 16
  expect_error(j, "'canvas_length' must be an integer in [1, 2147483647]");
  j = tiny_per_layer();
  j["text_config"]["per_layer_config"]["1"]["head_dim"] = 4294967312ull;  // would wrap to 16
  expect_error(j, "'text_config.per_layer_config.1.head_dim' must be an integer in [1, 2147483647]");
  j = tiny_per_layer();
  j["eos_token_id"] = {1, 4294967297ull};  // would wrap to 1
  expect_error(j, "'eos_token_id[1]' must be an integer in [0, 2147483647], got 4294967297");
  j = tiny_per_layer();
  j["text_config"]["pad_token_id"] = -1;
  expect_error(j, "'text_config.pad_token_id' must be an integer in [0, 2147483647], got -1");

  j = tiny_per_layer();
  j["model_type"] = 5;
  expect_error(j, "'model_type' must be a string, got 5");
  j = tiny_per_layer();
  j["tie_word_embeddings"] = "no";
  expect_error(j, "'tie_word_embeddings' must be a boolean, got \"no\"");
  j = tiny_per_layer();
  j["text_config"]["tie_word_embeddings"] = 0;
  expect_error(j, "'text_config.tie_word_embeddings' must be a boolean, got 0");
  j = tiny_per_layer();
  j["text_config"]["rope_parameters"] = {{"full_attention", {{"rope_theta", "1e6"}}}};
  expect_error(j, "'text_config.rope_parameters.full_attention.rope_theta' must be a number, got \"1e6\"");
  j = tiny_per_layer();
  j["text_config"]["rope_parameters"] = {{"sliding_attention", {{"rope_type", 1}}}};
  expect_error(j, "'text_config.rope_parameters.sliding_attention.rope_type' must be a string, got 1");
  j = tiny_per_layer();
  j["text_config"]["rope_parameters"] = {{"sliding_attention", 10000.0}};
  expect_error(j, "'text_config.rope_parameters.sliding_attention' must be a JSON object, got 10000.0");
  j = tiny_per_layer();
  j["text_config"]["hidden_activation"] = json::array();
  expect_error(j, "'text_config.hidden_activation' must be a string, got []");
  j = tiny_per_layer();
  j["text_config"]["use_bidirectional_attention"] = 3;
  expect_error(j, "'text_config.use_bidirectional_attention' must be a string or a boolean, got 3");
  j = tiny_per_layer();
  j["text_config"]["rms_norm_eps"] = "1e-6";
  expect_error(j, "'text_config.rms_norm_eps' must be a number, got \"1e-6\"");
  j = tiny_per_layer();
  j["text_config"]["layer_types"][1] = 7;
  expect_error(j, "'text_config.layer_types[1]' must be a string, got 7");
  j = tiny_per_layer();
  j["text_config"] = "none";
  expect_error(j, "'text_config' must be a JSON object");
  // Null keys take the defaults; the largest int is accepted.
  j = tiny_per_layer();
  j["text_config"]["sliding_window"] = nullptr;
  j["text_config"]["vocab_size"] = 2147483647;
  const ModelConfig c = parse_model_config(j, "m/config.json");
  CHECK(c.sliding_window == 512);
  CHECK(c.vocab_size == 2147483647);
}

TEST_CASE("generation_config.json: every key dgemma reads is type- and range-checked") {
  const json good = json::parse(R"({"max_new_tokens": 256, "max_denoising_steps": 48, "t_min": 0.4, "t_max": 1,
      "stability_threshold": 0, "confidence_threshold": 0.005, "pad_token_id": 0, "bos_token_id": 2,
      "eos_token_id": [1, 106], "sampler_config": {"entropy_bound": 0.1, "_cls_name": "X"},
      "return_dict_in_generate": true, "transformers_version": "5.23.0"})");
  CHECK_NOTHROW(check_generation_config(good, "g/generation_config.json"));
  CHECK_NOTHROW(check_generation_config(json::parse(R"({"max_new_tokens": null, "sampler_config": null})"), "g"));
  auto expect_error = [&](const char* key, json value, const std::string& needle) {
    json j = good;
    j[key] = std::move(value);
    CHECK_THROWS_WITH_AS(check_generation_config(j, "g/generation_config.json"),
                         doctest::Contains(("g/generation_config.json: " + needle).c_str()), ConfigError);
  };
  expect_error("max_new_tokens", "256", "'max_new_tokens' must be an integer in [1, 2147483647], got \"256\"");
  expect_error("max_new_tokens", 4294967552ull, "'max_new_tokens' must be an integer in [1, 2147483647], got 4294967552");
  expect_error("max_denoising_steps", 0, "'max_denoising_steps' must be an integer in [1, 2147483647], got 0");
  expect_error("max_denoising_steps", 4.5, "'max_denoising_steps' must be an integer");
  expect_error("stability_threshold", -1, "'stability_threshold' must be an integer in [0, 2147483647], got -1");
  expect_error("t_min", "0.4", "'t_min' must be a number, got \"0.4\"");
  expect_error("confidence_threshold", true, "'confidence_threshold' must be a number, got true");
  expect_error("pad_token_id", 2147483648ll, "'pad_token_id' must be an integer in [0, 2147483647], got 2147483648");
  expect_error("eos_token_id", {1, "2"}, "'eos_token_id[1]' must be an integer in [0, 2147483647], got \"2\"");
  expect_error("sampler_config", {{"entropy_bound", "0.1"}}, "'sampler_config.entropy_bound' must be a number");
  expect_error("sampler_config", "entropy", "'sampler_config' must be a JSON object");
  CHECK_THROWS_WITH_AS(check_generation_config(json::array(), "g/generation_config.json"),
                       doctest::Contains("the file must be a JSON object"), ConfigError);
}

TEST_CASE("json_integer: exact range checks at the edges of each type") {
  CHECK(json_integer_as<std::int32_t>(json(2147483647), "f", "k") == 2147483647);
  CHECK(json_integer_as<std::int32_t>(json(-2147483648ll), "f", "k") == -2147483647 - 1);
  CHECK_THROWS_WITH_AS(json_integer_as<std::int32_t>(json(2147483648ll), "f", "k"),
                       doctest::Contains("f: 'k' must be an integer in [-2147483648, 2147483647], got 2147483648"),
                       ConfigError);
  CHECK_THROWS_AS(json_integer_as<std::int32_t>(json(-2147483649ll), "f", "k"), ConfigError);
  CHECK(json_integer_as<std::int64_t>(json(9223372036854775807ull), "f", "k") == INT64_MAX);
  CHECK_THROWS_AS(json_integer_as<std::int64_t>(json(9223372036854775808ull), "f", "k"), ConfigError);
  CHECK(json_integer_as<std::uint32_t>(json(4294967295ull), "f", "k") == 4294967295u);
  CHECK_THROWS_AS(json_integer_as<std::uint32_t>(json(-1), "f", "k"), ConfigError);
  CHECK_THROWS_AS(json_integer_as<std::int64_t>(json(1.0), "f", "k"), ConfigError);
  CHECK_THROWS_AS(json_integer_as<std::int64_t>(json(true), "f", "k"), ConfigError);
  CHECK_THROWS_AS(json_integer_as<std::int64_t>(json(nullptr), "f", "k"), ConfigError);
}

TEST_CASE("vision_config: the tower a config implies, HF's defaults for what it omits, errors naming the key") {
  const json top = released_26b();
  const ModelConfig c = parse_model_config(top, "26b.json");
  const std::optional<VisionConfig> v = parse_vision_config(top, c, "26b.json");
  REQUIRE(v);
  CHECK(v->hidden_size == 1152);          // given
  CHECK(v->num_layers == 16);             // Gemma4VisionConfig's defaults (transformers 5.23) for the rest
  CHECK(v->intermediate_size == 3072);
  CHECK(v->position_embedding_size == 10240);
  CHECK(v->text_hidden_size == 2816);
  CHECK(v->projector_initializer_range == 0.02);
  CHECK_FALSE(v->standardize);

  json no_vision = top;
  no_vision.erase("vision_config");  // DiffusionGemmaConfig builds the default tower: init writes it
  const std::optional<VisionConfig> d = parse_vision_config(no_vision, c, "x.json");
  REQUIRE(d);
  CHECK(d->hidden_size == 768);
  // std_bias/std_scale absent, position table, input_proj, 16 layers of 4 + 2 + 3 + 4 tensors, the projector
  const std::vector<CarriedSpec> specs = vision_params(*d);
  CHECK(specs.size() == 2 + 16 * 13 + 1);
  CHECK(specs.back().name == "model.encoder.embed_vision.embedding_projection.weight");
  CHECK(specs.back().shape == Shape{2816, 768});

  json clipped = top;
  clipped["vision_config"]["use_clipped_linears"] = true;
  clipped["vision_config"]["standardize"] = true;
  clipped["vision_config"]["num_hidden_layers"] = 1;
  const std::vector<CarriedSpec> cs = vision_params(*parse_vision_config(clipped, c, "x.json"));
  CHECK(cs.size() == 2 + 2 + 1 * (7 * 5 + 2 + 4) + 1);  // 7 clippable linears with 4 bound buffers each
  CHECK(cs[0].name == "model.encoder.vision_tower.std_bias");
  CHECK(cs[0].init == CarriedInit::Zeros);

  json text_only = top["text_config"];
  text_only["model_type"] = "diffusion_gemma_text";
  CHECK_FALSE(parse_vision_config(text_only, parse_model_config(text_only, "t.json"), "t.json"));

  json other = top;
  other["vision_config"]["model_type"] = "siglip_vision_model";
  CHECK_THROWS_WITH_AS(parse_vision_config(other, c, "o.json"),
                       doctest::Contains("o.json: 'vision_config.model_type' is 'siglip_vision_model'"), ConfigError);
  json bad = top;
  bad["vision_config"]["head_dim"] = 0;
  CHECK_THROWS_WITH_AS(parse_vision_config(bad, c, "b.json"), doctest::Contains("vision_config.head_dim"), ConfigError);
  bad = top;
  bad["initializer_range"] = "big";
  CHECK_THROWS_WITH_AS(parse_vision_config(bad, c, "b.json"), doctest::Contains("initializer_range"), ConfigError);
}
