#include <array>

#include "jobs/jobs.h"

namespace dg {

namespace {

constexpr std::array kJobs = {
    Job{"sft", "supervised block-diffusion fine-tuning",
        "With no options it trains the built-in tiny model on the built-in tiny task (jobs/examples/tiny-task:\n"
        "\"Add one to each digit: 3 8 1\" -> \"4 9 2\") for 600 steps, a few minutes on one CPU core.\n"
        "Examples:\n  dgemma sft --out sft-run\n"
        "  mpirun -n 4 dgemma sft --model hf-model --data train.jsonl --out run --steps 800 --checkpoint-every 100\n"
        "  dgemma sft --out run --resume            # after a stop (exit 42) or a crash\n"
        "Writes OUT/checkpoints/step_*/ (sharded HDF5), OUT/metrics.jsonl (scripts/plot_metrics.py draws it)\n"
        "and OUT/hf-final/ (a Hugging Face directory). SIGUSR1/SIGTERM: checkpoint, then exit 42.\n"
        "Tensors the text model does not use (vision tower) go into every checkpoint and hf-final untouched.",
        sft_options, sft_run, false},
    Job{"generate", "batch block-diffusion generation over prompt files",
        "Examples:\n  dgemma generate --model hf-model --input prompts.jsonl --output results.jsonl\n"
        "  mpirun -n 8 dgemma generate --model hf-model --input batch.jsonl --output out.jsonl --resume\n"
        "Input lines: {\"id\", \"prompt\" | \"messages\", \"max_tokens\"} or the OpenAI batch form\n"
        "{\"custom_id\", \"method\", \"url\", \"body\": {\"messages\", \"max_tokens\", \"temperature\", \"seed\", \"stop\"}}.\n"
        "One result line per request, in input order; an OpenAI batch line is answered in the Batch API's\n"
        "output form ({\"id\", \"custom_id\", \"response\": {\"status_code\", \"request_id\", \"body\": a\n"
        "chat.completion}, \"error\"}, dgemma's metrics in \"dgemma\"). temperature multiplies the schedule.\n"
        "Defaults come from the model's generation_config.json; options override them.",
        generate_options, generate_run, true},
    Job{"convert", "convert checkpoints between Hugging Face safetensors and sharded HDF5",
        "Examples:\n  mpirun -n 4 dgemma convert --from hf --to h5 --in hf-model --out ckpt\n"
        "  mpirun -n 4 dgemma convert --from h5 --to hf --in ckpt --out hf-model --tokenizer hf-model-orig\n"
        "Streams tensor by tensor; any number of ranks. HF -> H5 -> HF reproduces the safetensors bytes.\n"
        "Tensors the text model does not use (vision tower) are carried through untouched.",
        convert_options, convert_run, false},
    Job{"init", "write a randomly initialised model as a Hugging Face directory",
        "Examples:\n  dgemma init --preset tiny --out tiny-model --dtype f32\n"
        "  dgemma init --model-config config.json --out model --seed 7\n"
        "Written tensor by tensor into OUT.tmp and renamed when complete. The model is complete: the vision\n"
        "tower the config implies is written too, initialised as transformers would.",
        init_options, init_run, false},
    Job{"inspect", "list and check the tensors of a Hugging Face directory or checkpoint",
        "Example:\n  dgemma inspect --path model-dir\n"
        "Lists every tensor (name, dtype, shape, bytes), how it maps to dgemma's names, and checks the\n"
        "set against config.json: missing, unknown or mis-shaped tensors are reported (exit 2).",
        inspect_options, inspect_run, false},
    Job{"bench", "benchmarks: GEMM, collectives, model ops, model passes (encode, decode, generation step, SFT step), FSDP and EP traffic",
        "Runs every requested benchmark on every rank and prints rank 0's results; collective\n"
        "benchmarks measure the whole job. Sizes are per rank.",
        bench_options, bench_run, true},
};

}  // namespace

std::span<const Job> all_jobs() { return kJobs; }

const Job* find_job(std::string_view name) {
  for (const Job& j : kJobs)
    if (j.name == name) return &j;
  return nullptr;
}

}  // namespace dg
