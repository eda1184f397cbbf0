// load_hf_model (see model_load.h).
#include "jobs/model_load.h"

#include <filesystem>

#include "io/hf_config.h"

namespace dg {

HfModel load_hf_model(const std::string& dir) {
  namespace fs = std::filesystem;
  if (!fs::is_directory(dir)) fail_config("{} is not a Hugging Face model directory", dir);
  HfModel m;
  m.config_json = read_json_file((fs::path(dir) / "config.json").string());
  m.config = parse_model_config(m.config_json, (fs::path(dir) / "config.json").string());
  if (fs::exists(fs::path(dir) / "generation_config.json"))
    m.generation_config_json = read_json_file((fs::path(dir) / "generation_config.json").string());
  const HfTensorReader reader(dir, m.config);
  m.weights = allocate_model(m.config);
  // (row views such as mlp.gate_proj are contiguous parts of their member: read straight into them)
  for (const NamedTensor& t : model_tensors(m.config, m.weights)) reader.read(t.name, 0, t.tensor.numel(), t.tensor.data<float>());
  m.carried = reader.carried();
  return m;
}

}  // namespace dg
