// The vision tower of a DiffusionGemma checkpoint as data: Gemma 4's vision encoder (HF Gemma4VisionModel,
// "model.encoder.vision_tower.*") and its projector into the text model (DiffusionGemmaMultimodalEmbedder,
// "model.encoder.embed_vision.*"): which tensors HF's save_pretrained writes for a vision config, their
// shapes, and how HF's _init_weights initialises each (transformers 5.23):
//   nn.Linear weights                       N(0, initializer_range): the tower's from vision_config, the
//                                           projector's from the top-level DiffusionGemmaConfig
//   RMSNorm weights (layer norms, q/k norm) 1
//   patch_embedder.position_embedding_table 1 (DiffusionGemmaPreTrainedModel._init_weights: init.ones_)
//   std_bias / std_scale (standardize)      0 / 1
//   input_min, output_min / input_max, output_max (use_clipped_linears)  -inf / +inf
// dgemma never computes with these tensors: it carries them (io/hf_names.h). Knowing them lets `dgemma
// init` (and `dgemma sft` on a preset) write a complete model that transformers loads with nothing missing.
// They have no native names: they are listed by their HF names.
#pragma once
#include <string>
#include <vector>

#include "layers/tensor.h"

namespace dg {

// HF Gemma4VisionConfig's fields that shape the tensors, with its defaults (transformers 5.23), plus the
// two numbers of the enclosing DiffusionGemmaConfig the projector takes.
struct VisionConfig {
  int hidden_size = 768;
  int intermediate_size = 3072;
  int num_layers = 16;
  int num_heads = 12;
  int num_kv_heads = 12;
  int head_dim = 64;
  int patch_size = 16;
  int position_embedding_size = 10240;
  int output_dims = 0;              // the projector's input width: output_proj_dims when set, else hidden_size
  bool use_clipped_linears = false;
  bool standardize = false;
  double initializer_range = 0.02;            // vision_config.initializer_range: the tower's linears
  double projector_initializer_range = 0.02;  // the top-level initializer_range: embed_vision's linear
  int text_hidden_size = 0;                   // the projector's output width
};

enum class CarriedInit { Normal, Ones, Zeros, PlusInf, MinusInf };

struct CarriedSpec {
  std::string name;  // HF name
  Shape shape;
  CarriedInit init = CarriedInit::Normal;
  float std = 0;     // Normal only
};

// The tensors of the vision tower and projector, in HF's state_dict() order.
std::vector<CarriedSpec> vision_params(const VisionConfig& v);

}  // namespace dg
