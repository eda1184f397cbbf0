# The fuzz targets: fuzz/targets/<name>.cpp, each defining LLVMFuzzerTestOneInput; corpus in fuzz/corpus/<name>/.
set(DGEMMA_FUZZ_TARGETS safetensors tokenizer sft_jsonl generate_jsonl job_ini checkpoint_manifest)
