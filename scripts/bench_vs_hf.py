#!/usr/bin/env python3
"""dgemma next to the Hugging Face PyTorch implementation of DiffusionGemma, on the CPU, at equal shapes.

For each model config (--configs):
  tiny   the `dgemma` tiny preset (io/presets.cpp): H 64, 6 layers (5 sliding + 1 full), 8 experts top-2, V 2048,
         canvas 8
  small  the real structure at ~73M parameters: H 512, 8 layers of which 2 full attention (head dim 64 sliding,
         128 full, 2 global KV heads), 16 experts top-4, dense MLP 1024, expert MLP 256, V 2048, canvas 32,
         sliding window 64
the script creates a DiffusionGemmaForBlockDiffusion with transformers (its own random init, seed 0), saves it
with save_pretrained (fp32) plus the built-in dgemma tokenizer (from `dgemma init`), and then, for each thread
count (--threads) and repetition (--reps), runs the two sides one after the other, alternating which goes first:

  model bench   `dgemma bench --what model --model-config DIR` (jobs/bench_model.cpp) and this script's
                `--worker hf` in a fresh process each, same batch / prompt length / canvas:
                  encoder forward   prompt batch [B, L] into a fresh KV cache
                  decoder forward   one canvas [B, C] over that cache, no self-conditioning input, hidden states out
                  generation step   one denoising step of generate() (decoder + sampler: HF's _denoising_step,
                                    dgemma's interval between two progress calls), nobody stops early
                  sft step          one optimizer step of one micro-batch [B, L + C] (one canvas block,
                                    self-conditioning on every row): forward + backward + clip + AdamW; the PyTorch
                                    side is scripts/sft_reference_check.py's recipe (micro_batch, clip_grad_norm_,
                                    AdamW foreach=False)
                each --iters timed runs after one warm-up
  generation    `dgemma generate` vs HF `model.generate` on the first --prompts prompts of the tiny task's held-out
                set (chat template applied by each side's tokenizer; the prompt lengths are compared), same
                batch size, max_new_tokens, max_denoising_steps and sampler defaults; completion tokens / second of
                the generation loop (model loading excluded)
  peak RSS      of each process (ru_maxrss): the model-bench process and the generate process

Threads: torch.set_num_threads(N) (and OMP/MKL_NUM_THREADS) for PyTorch; `--threads N` for dgemma (its GEMMs and
its other CPU ops; OPENBLAS_NUM_THREADS=N is set too). The table gives HF time / dgemma time (> 1: dgemma is faster) for the min
and the median over every timed run of every repetition; for generation and RSS the ratio of the best / median rep.

Usage (the pinned packages: python3 -m venv /tmp/hfvenv && /tmp/hfvenv/bin/pip install -r
scripts/fixtures/requirements.txt):
  /tmp/hfvenv/bin/python scripts/bench_vs_hf.py --dgemma build/app/dgemma [--quick] [--threads 1,2]
      [--configs tiny,small] [--reps 3] [--iters 5] [--markdown results.md] [--workdir DIR]
--quick: 1 repetition, 2 timed runs, 1 canvas of generation with 8 steps: a few minutes on 2 cores.
"""
import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
REQUIREMENTS = HERE / "fixtures" / "requirements.txt"
PROMPTS = REPO / "jobs" / "examples" / "tiny-task" / "heldout.jsonl"
INSTALL = ("python3 -m venv /tmp/hfvenv && /tmp/hfvenv/bin/pip install -r scripts/fixtures/requirements.txt, "
           "then run this script with /tmp/hfvenv/bin/python")

ROPE = {"sliding_attention": {"rope_type": "default", "rope_theta": 10000.0},
        "full_attention": {"rope_type": "proportional", "partial_rotary_factor": 0.25, "rope_theta": 1e6}}
COMMON = dict(final_logit_softcapping=30.0, rms_norm_eps=1e-6, use_bidirectional_attention="vision",
              pad_token_id=0, bos_token_id=2, eos_token_id=1, rope_parameters=ROPE)

# text_config, canvas, and the shapes each benchmark runs at (batch B, prompt L; generation: batch, new tokens,
# denoising steps).
CONFIGS = {
    "tiny": dict(
        text=dict(vocab_size=2048, hidden_size=64, intermediate_size=128, num_hidden_layers=6, num_attention_heads=4,
                  num_key_value_heads=2, head_dim=16, num_experts=8, top_k_experts=2, moe_intermediate_size=32,
                  sliding_window=32, layer_types=["sliding_attention"] * 5 + ["full_attention"],
                  per_layer_config={5: {"head_dim": 32, "num_key_value_heads": 1}}, **COMMON),
        canvas=8, batch=4, prompt_len=64, gen_batch=10, gen_new=16, gen_steps=16),
    "small": dict(
        text=dict(vocab_size=2048, hidden_size=512, intermediate_size=1024, num_hidden_layers=8, num_attention_heads=8,
                  num_key_value_heads=4, head_dim=64, global_head_dim=128, num_global_key_value_heads=2,
                  num_experts=16, top_k_experts=4, moe_intermediate_size=256, sliding_window=64,
                  layer_types=(["sliding_attention"] * 3 + ["full_attention"]) * 2, **COMMON),
        canvas=32, batch=4, prompt_len=128, gen_batch=10, gen_new=64, gen_steps=16),
}
BENCHES = ["encoder forward", "decoder forward", "generation step", "sft step"]


def require_packages(worker: bool):
    """The driver only checks that the packages are installed (it must not import torch: a child's peak RSS as
    os.wait4 reports it starts from the parent's RSS at the fork); the workers import them."""
    import importlib.metadata
    import importlib.util
    missing = [m for m in ("torch", "transformers", "safetensors", "tokenizers", "jinja2")
               if importlib.util.find_spec(m) is None]
    if missing:
        sys.exit(f"bench_vs_hf.py: {sys.executable} lacks the Python packages {', '.join(missing)}.\n"
                 f"Install the pinned set: {INSTALL}")
    if not worker:
        pins = dict(l.strip().split("==") for l in REQUIREMENTS.read_text().splitlines() if "==" in l and l[0] != "#")
        for name in ("torch", "transformers"):
            have = importlib.metadata.version(name)
            if not have.startswith(pins[name]):
                print(f"warning: {name} {have}, pinned {pins[name]} ({REQUIREMENTS.relative_to(REPO)})", file=sys.stderr)
        return
    import transformers
    if not hasattr(transformers, "DiffusionGemmaForBlockDiffusion"):
        sys.exit(f"bench_vs_hf.py: transformers {transformers.__version__} has no DiffusionGemmaForBlockDiffusion "
                 f"(needs the pinned version in {REQUIREMENTS.relative_to(REPO)}). {INSTALL}")


def versions() -> dict:
    import importlib.metadata
    return {"torch": importlib.metadata.version("torch"), "transformers": importlib.metadata.version("transformers"),
            "python": sys.version.split()[0]}


# ---------------------------------------------------------------------------------------------------------------
# The reference side (run in a fresh process per measurement: --worker)


def set_threads(n: int):
    import torch
    torch.set_num_threads(n)
    torch.set_num_interop_threads(1)


def time_runs(iters: int, f) -> list:
    f()
    out = []
    for _ in range(iters):
        t0 = time.perf_counter()
        f()
        out.append(time.perf_counter() - t0)
    return out


def sft_dump(model, B: int, L: int, gen) -> dict:
    """One micro-batch in the layout scripts/sft_reference_check.py replays (what bench_model.cpp's sft_batch
    builds): prompt L, one canvas block C, every position valid, the whole block in the loss, coin 1."""
    import torch
    C, V = model.config.canvas_length, model.config.text_config.vocab_size
    S = L + C
    clean = torch.randint(3, V, (B, S), generator=gen, dtype=torch.int32)
    ar_targets = torch.zeros(B, S, dtype=torch.int32)
    ar_targets[:, :-1] = clean[:, 1:]
    ar_mask = torch.zeros(B, S)
    ar_mask[:, :-1] = 1.0
    return {"clean": clean, "clean_valid": torch.ones(B, S, dtype=torch.int32),
            "canvas": torch.randint(3, V, (B, C), generator=gen, dtype=torch.int32),
            "prompt_len": torch.full((B,), L, dtype=torch.int64), "canvas_len": torch.full((B,), C, dtype=torch.int64),
            "diff_targets": clean[:, L:].clone(), "diff_mask": torch.ones(B, C), "ar_targets": ar_targets,
            "ar_mask": ar_mask, "sc_coin": torch.ones(B, dtype=torch.int32),
            "meta": {"n_diff": str(B * C), "n_ar": str(B * (S - 1))}}


def worker_model(args) -> dict:
    import torch
    from transformers import DiffusionGemmaForBlockDiffusion
    from transformers.cache_utils import DynamicCache
    sys.path.insert(0, str(HERE))
    import sft_reference_check as recipe

    set_threads(args.threads)
    B, L, iters = args.batch, args.prompt_len, args.iters
    model = DiffusionGemmaForBlockDiffusion.from_pretrained(args.model, dtype=torch.float32).eval()
    tc = model.config.text_config
    C, V = model.config.canvas_length, tc.vocab_size
    gen = torch.Generator().manual_seed(1234)
    prompt = torch.randint(3, V, (B, L), generator=gen)
    canvas = torch.randint(3, V, (B, C), generator=gen)
    enc, dec = model.model.encoder, model.model.decoder
    res = {"attn_implementation": model.config._attn_implementation,
           "experts_implementation": getattr(model.config, "_experts_implementation", None)}
    with torch.inference_mode():
        res["encoder forward"] = time_runs(iters, lambda: enc(input_ids=prompt, past_key_values=DynamicCache(config=tc)))
        cache = DynamicCache(config=tc)
        enc(input_ids=prompt, past_key_values=cache)
        res["decoder forward"] = time_runs(iters, lambda: dec(decoder_input_ids=canvas, past_key_values=cache))
        # One generate() of iters + 1 steps over one canvas; the first step is the warm-up.
        steps, inner = [], model._denoising_step

        def timed_step(*a, **k):
            t0 = time.perf_counter()
            out = inner(*a, **k)
            steps.append(time.perf_counter() - t0)
            return out

        model._denoising_step = timed_step
        model.generate(input_ids=prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=C,
                       max_denoising_steps=iters + 1, confidence_threshold=1e-30)
        del model._denoising_step
        if len(steps) != iters + 1:
            raise SystemExit(f"HF generate ran {len(steps)} denoising steps, expected {iters + 1}")
        res["generation step"] = steps[1:]
    del model, enc, dec, cache
    # The SFT step: the reference recipe's model (eager attention and experts, router frozen) and its micro_batch.
    model, params = recipe.load_model(args.model)
    opt = torch.optim.AdamW([p for _, p in params], lr=1e-4, betas=(0.95, 0.99), eps=1e-8, weight_decay=1e-4,
                            foreach=False)
    d = sft_dump(model, B, L, gen)

    def sft_step():
        model.zero_grad(set_to_none=True)
        recipe.micro_batch(model, d, C, tc.sliding_window, 1.0, [])
        torch.nn.utils.clip_grad_norm_([p for _, p in params], max_norm=1.0, foreach=False)
        opt.step()

    res["sft step"] = time_runs(iters, sft_step)
    return res


def read_prompts(n: int) -> list:
    rows = [json.loads(l) for l in PROMPTS.read_text().splitlines() if l.strip()][:n]
    if len(rows) < n:
        raise SystemExit(f"{PROMPTS} has only {len(rows)} prompts")
    return rows


def worker_generate(args) -> dict:
    import torch
    from transformers import AutoTokenizer, DiffusionGemmaForBlockDiffusion
    set_threads(args.threads)
    model = DiffusionGemmaForBlockDiffusion.from_pretrained(args.model, dtype=torch.float32).eval()
    tok = AutoTokenizer.from_pretrained(args.model)
    pad = model.config.text_config.pad_token_id
    eos = set(model.generation_config.eos_token_id if isinstance(model.generation_config.eos_token_id, list)
              else [model.generation_config.eos_token_id])
    ids = []
    for r in read_prompts(args.prompts):
        x = tok.apply_chat_template([{"role": "user", "content": r["prompt"]}], add_generation_prompt=True,
                                    tokenize=True, return_dict=False)
        ids.append(list(x["input_ids"] if isinstance(x, dict) else x))
    order = sorted(range(len(ids)), key=lambda i: len(ids[i]))  # as dgemma generate: by length, then batches
    tokens = passes = 0
    t0 = time.perf_counter()
    with torch.inference_mode():
        for b0 in range(0, len(order), args.gen_batch):
            rows = [ids[i] for i in order[b0:b0 + args.gen_batch]]
            Lb = max(len(r) for r in rows)
            x = torch.tensor([[pad] * (Lb - len(r)) + r for r in rows])
            m = torch.tensor([[0] * (Lb - len(r)) + [1] * len(r) for r in rows])
            out = model.generate(input_ids=x, attention_mask=m, max_new_tokens=args.gen_new,
                                 max_denoising_steps=args.gen_steps)
            seq = out.sequences if hasattr(out, "sequences") else out
            for row in seq[:, Lb:].tolist():
                for t in row:  # completion tokens: through the first EOS, pads not counted (dgemma's count)
                    tokens += t != pad
                    if t in eos:
                        break
    elapsed = time.perf_counter() - t0
    return {"tokens": tokens, "seconds": elapsed, "tokens_per_s": tokens / elapsed,
            "prompt_tokens": sorted(len(r) for r in ids)}


# ---------------------------------------------------------------------------------------------------------------
# The driver


def run_measured(cmd, env, timeout, what):
    """Runs cmd; returns (stdout+stderr, seconds, peak RSS in MB of exactly that process: os.wait4's ru_maxrss)."""
    t0 = time.perf_counter()
    with tempfile.TemporaryFile("w+") as log:
        p = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, text=True)
        deadline = time.time() + timeout
        while True:
            pid, status, ru = os.wait4(p.pid, os.WNOHANG)
            if pid:
                break
            if time.time() > deadline:
                p.kill()
                os.wait4(p.pid, 0)
                raise SystemExit(f"{what}: no result after {timeout} s: {' '.join(map(str, cmd))}")
            time.sleep(0.02)
        p.returncode = os.waitstatus_to_exitcode(status)
        log.seek(0)
        out = log.read()
    if p.returncode != 0:
        raise SystemExit(f"{what} failed (exit {p.returncode}): {' '.join(map(str, cmd))}\n{out[-4000:]}")
    return out, time.perf_counter() - t0, ru.ru_maxrss / 1024.0


def thread_env(n: int) -> dict:
    env = dict(os.environ)
    for k in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        env[k] = str(n)
    env.setdefault("OMPI_ALLOW_RUN_AS_ROOT", "1")
    env.setdefault("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1")
    return env


def make_model(name: str, out: Path, tokenizer_dir: Path):
    import torch
    from transformers import DiffusionGemmaConfig, DiffusionGemmaForBlockDiffusion
    spec = CONFIGS[name]
    torch.manual_seed(0)
    # A tiny vision tower (transformers builds a full-size one by default): the real layout, negligible weights.
    vision = dict(model_type="gemma4_vision", hidden_size=16, intermediate_size=24, num_hidden_layers=1,
                  num_attention_heads=2, num_key_value_heads=1, head_dim=8)
    cfg = DiffusionGemmaConfig(text_config=dict(spec["text"]), vision_config=vision, canvas_length=spec["canvas"],
                               eos_token_id=[1, 106])
    model = DiffusionGemmaForBlockDiffusion(cfg).float().eval()
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    for f in tokenizer_dir.iterdir():  # dgemma's built-in tokenizer: both sides render the chat with it
        if f.name.startswith(("tokenizer", "special_tokens", "chat_template")):
            shutil.copy(f, out / f.name)
    n = sum(p.numel() for k, p in model.named_parameters() if "vision" not in k)  # text model, tied once
    print(f"{name}: {n / 1e6:.1f} M parameters -> {out}", flush=True)
    return n


def bench_row(samples_d, samples_h):
    """(dgemma min, median, HF min, median, ratio of mins, ratio of medians)."""
    dm, dd = min(samples_d), statistics.median(samples_d)
    hm, hd = min(samples_h), statistics.median(samples_h)
    return dm, dd, hm, hd, hm / dm, hd / dd


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dgemma", default=str(REPO / "build" / "app" / "dgemma"), help="the dgemma binary")
    ap.add_argument("--workdir", help="models and logs (default: a temporary directory, removed)")
    ap.add_argument("--configs", default="tiny,small")
    ap.add_argument("--threads", default="1,2", help="comma-separated thread counts")
    ap.add_argument("--reps", type=int, default=3, help="repetitions per thread count (sides alternate)")
    ap.add_argument("--iters", type=int, default=5, help="timed runs per benchmark and repetition")
    ap.add_argument("--prompts", type=int, default=50, help="generation: prompts of the held-out set")
    ap.add_argument("--quick", action="store_true", help="1 rep, 2 iters, one canvas of 8 steps")
    ap.add_argument("--markdown", help="also write the table as Markdown to this file")
    ap.add_argument("--timeout", type=int, default=3600, help="seconds per process")
    # worker mode (internal)
    ap.add_argument("--worker", choices=["hf", "hf-generate", "make-model"], help=argparse.SUPPRESS)
    ap.add_argument("--name", help=argparse.SUPPRESS)
    ap.add_argument("--tokenizer", help=argparse.SUPPRESS)
    ap.add_argument("--model", help=argparse.SUPPRESS)
    ap.add_argument("--batch", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--prompt-len", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--gen-batch", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--gen-new", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--gen-steps", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--json", help=argparse.SUPPRESS)
    ap.add_argument("--threads-n", dest="threads_n", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    require_packages(worker=bool(args.worker))

    if args.worker == "make-model":
        Path(args.json).write_text(json.dumps(make_model(args.name, Path(args.model), Path(args.tokenizer))))
        return
    if args.worker:
        args.threads = args.threads_n
        res = worker_model(args) if args.worker == "hf" else worker_generate(args)
        Path(args.json).write_text(json.dumps(res))
        return

    if args.quick:
        args.reps, args.iters = 1, 2
    dgemma = Path(args.dgemma).resolve()
    if not os.access(dgemma, os.X_OK):
        sys.exit(f"bench_vs_hf.py: no dgemma binary at {dgemma} (build it: BUILD_DIR=build-hfb scripts/build.sh "
                 f"-DDGEMMA_CUDA=OFF, then pass --dgemma build-hfb/app/dgemma)")
    threads = [int(t) for t in args.threads.split(",")]
    configs = args.configs.split(",")
    for c in configs:
        if c not in CONFIGS:
            sys.exit(f"unknown config {c} (have {', '.join(CONFIGS)})")
    work = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="bench_vs_hf."))
    work.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    v = versions()
    print(f"bench_vs_hf: {v}, dgemma {dgemma}, {os.cpu_count()} CPUs, threads {threads}, reps {args.reps}, "
          f"iters {args.iters}, work {work}", flush=True)

    tok_dir = work / "tokenizer"
    if not (tok_dir / "tokenizer.json").exists():
        shutil.rmtree(tok_dir, ignore_errors=True)
        run_measured([dgemma, "init", "--preset", "tiny", "--out", tok_dir, "--dtype", "f32"], thread_env(1), 600,
                     "dgemma init (for its tokenizer)")
    prompts = work / "prompts.jsonl"
    prompts.write_text("".join(json.dumps(r) + "\n" for r in read_prompts(args.prompts)))

    table = []  # rows: config, threads, metric, dgemma min, dgemma median, HF min, HF median, ratio min, ratio median, unit
    for name in configs:
        spec = CONFIGS[name]
        mdir = work / name
        nj = work / f"{name}_params.json"
        run_measured([sys.executable, __file__, "--worker", "make-model", "--name", name, "--model", str(mdir),
                      "--tokenizer", str(tok_dir), "--json", str(nj)], thread_env(2), args.timeout, "make-model")
        nparams = json.loads(nj.read_text())
        print(f"{name}: {nparams / 1e6:.1f} M parameters (HF init, seed 0) saved to {mdir}", flush=True)
        gen_new, gen_steps = (spec["canvas"], 8) if args.quick else (spec["gen_new"], spec["gen_steps"])
        for n in threads:
            env = thread_env(n)
            samples = {(side, b): [] for side in ("dgemma", "hf") for b in BENCHES}
            rss = {"dgemma": [], "hf": []}
            gen = {"dgemma": [], "hf": []}
            gen_rss = {"dgemma": [], "hf": []}
            plens = {}
            for rep in range(args.reps):
                sides = ["dgemma", "hf"] if rep % 2 == 0 else ["hf", "dgemma"]
                for side in sides:  # model bench
                    out_json = work / f"{name}_{n}_{rep}_{side}.json"
                    if side == "dgemma":
                        cmd = [dgemma, "bench", "--what", "model", "--model-config", mdir, "--iters", args.iters,
                               "--batch", spec["batch"], "--prompt-len", spec["prompt_len"], "--json", out_json,
                               "--threads", n]
                    else:
                        cmd = [sys.executable, __file__, "--worker", "hf", "--model", mdir, "--threads-n", n,
                               "--iters", args.iters, "--batch", spec["batch"], "--prompt-len", spec["prompt_len"],
                               "--json", out_json]
                    _, secs, peak = run_measured([str(c) for c in cmd], env, args.timeout, f"{side} model bench")
                    if side == "dgemma":
                        for line in out_json.read_text().splitlines():
                            r = json.loads(line)
                            samples[(side, r["benchmark"])] += r["seconds"]
                    else:
                        r = json.loads(out_json.read_text())
                        for b in BENCHES:
                            samples[(side, b)] += r[b]
                        impl = (r["attn_implementation"], r["experts_implementation"])
                    rss[side].append(peak)
                    print(f"  {name} threads {n} rep {rep + 1}: {side} model bench {secs:.1f} s, peak RSS {peak:.0f} MB",
                          flush=True)
                for side in sides:  # generation on the prompt set
                    if side == "dgemma":
                        outp = work / f"gen_{name}_{n}_{rep}.jsonl"
                        cmd = [dgemma, "generate", "--model", mdir, "--input", prompts, "--output", outp,
                               "--overwrite", "--batch-size", spec["gen_batch"], "--max-new-tokens", gen_new,
                               "--max-denoising-steps", gen_steps, "--progress-seconds", 1000, "--threads", n]
                        log, secs, peak = run_measured([str(c) for c in cmd], env, args.timeout, "dgemma generate")
                        m = re.search(r"generated now: (\d+) tokens, (\d+) decoder passes, ([0-9.]+) tokens/s", log)
                        if not m:
                            raise SystemExit(f"dgemma generate: no summary line in its log:\n{log[-2000:]}")
                        gen[side].append(float(m.group(3)))
                        plens[side] = sorted(json.loads(l)["prompt_tokens"] for l in outp.read_text().splitlines())
                    else:
                        out_json = work / f"gen_{name}_{n}_{rep}_hf.json"
                        cmd = [sys.executable, __file__, "--worker", "hf-generate", "--model", mdir, "--threads-n", n,
                               "--prompts", args.prompts, "--gen-batch", spec["gen_batch"], "--gen-new", gen_new,
                               "--gen-steps", gen_steps, "--json", out_json]
                        _, secs, peak = run_measured([str(c) for c in cmd], env, args.timeout, "HF generate")
                        r = json.loads(out_json.read_text())
                        gen[side].append(r["tokens_per_s"])
                        plens[side] = r["prompt_tokens"]
                    gen_rss[side].append(peak)
                    print(f"  {name} threads {n} rep {rep + 1}: {side} generate {secs:.1f} s, "
                          f"{gen[side][-1]:.1f} tokens/s, peak RSS {peak:.0f} MB", flush=True)
            if plens["dgemma"] != plens["hf"]:
                print(f"warning: {name}: the two sides' prompt lengths differ (dgemma {sum(plens['dgemma'])} tokens, "
                      f"HF {sum(plens['hf'])})", file=sys.stderr)
            for b in BENCHES:
                table.append((name, n, b + " (ms)",
                              *[x * 1e3 for x in bench_row(samples[("dgemma", b)], samples[("hf", b)])[:4]],
                              *bench_row(samples[("dgemma", b)], samples[("hf", b)])[4:]))
            # tokens/s: higher is better; the ratio is still HF time / dgemma time = dgemma rate / HF rate.
            dg, hf = gen["dgemma"], gen["hf"]
            table.append((name, n, f"generate {args.prompts} prompts (tok/s)", max(dg), statistics.median(dg), max(hf),
                          statistics.median(hf), max(dg) / max(hf), statistics.median(dg) / statistics.median(hf)))
            for what, d in (("peak RSS model bench (MB)", rss), ("peak RSS generate (MB)", gen_rss)):
                table.append((name, n, what, min(d["dgemma"]), statistics.median(d["dgemma"]), min(d["hf"]),
                              statistics.median(d["hf"]), min(d["hf"]) / min(d["dgemma"]),
                              statistics.median(d["hf"]) / statistics.median(d["dgemma"])))
        print(f"{name}: {nparams / 1e6:.1f} M parameters; batch {spec['batch']}, prompt {spec['prompt_len']}, canvas "
              f"{spec['canvas']}; generate: batch {spec['gen_batch']}, max_new_tokens {gen_new}, {gen_steps} denoising "
              f"steps; HF attention {impl[0]}, experts {impl[1]}", flush=True)

    total = time.perf_counter() - t_start
    head = ("config", "threads", "metric", "dgemma min", "dgemma median", "HF min", "HF median", "HF/dgemma (min)",
            "HF/dgemma (median)")
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in table:
        lines.append("| " + " | ".join([r[0], str(r[1]), r[2]] + [f"{x:.2f}" if x < 100 else f"{x:.0f}" for x in r[3:7]]
                                       + [f"{r[7]:.2f}x", f"{r[8]:.2f}x"]) + " |")
    print()
    print("\n".join(lines))
    note = (f"\nRatios are HF time / dgemma time (tokens/s: dgemma rate / HF rate; RSS: HF / dgemma): > 1 means dgemma "
            f"is faster or smaller. generate: best and median of the reps. {v}; {args.reps} reps x {args.iters} timed "
            f"runs; script wall time {total:.0f} s.")
    print(note)
    if args.markdown:
        Path(args.markdown).write_text("\n".join(lines) + "\n" + note + "\n")
    if not args.workdir:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
