#!/usr/bin/env python3
"""Replays a `dgemma sft` run in PyTorch on the very batches and noise it drew, and compares the losses.

The C++ job dumps every micro-batch it trains on (`dgemma sft --dump-batches DIR`: clean ids, attention mask,
noised canvas, prompt/canvas lengths, diffusion targets and selected-block mask, AR targets and mask,
self-conditioning coins, and the normalisers n_diff / n_ar and the learning rate in the metadata). This script
starts from the same initial model and runs the same recipe (spec/training.md §1.3-§1.4, §4, §5, §6) with the
Hugging Face DiffusionGemma modules and torch autograd, step by step, then prints C++ vs PyTorch per step:

  per micro-batch (all fp32 on CPU):
    1. encode: clean [B,S] through model.encoder.language_model, positions 0..S-1, explicit 4D additive masks
       (full: k <= q & valid[k]; sliding: also q - k < W) and a DynamicCache() made WITHOUT a config, so every
       layer (sliding ones too) keeps all S keys/values, on the autograd graph (asserted).
       L_ar = sum ar_mask * CE(softcap(lm_head(h_enc)), ar_targets) / n_ar
    2. decode pass 1 under no_grad: the noised canvas through model.decoder with the §4.2 canvas masks built here
       (encoder column c visible to canvas row j of block bq iff c < P + Bk*bq, on sliding layers also
       c >= P + Bk*bq - (W-1); canvas keys of the own block only, j' < R_b; every row sees its own canvas key, so
       the padding rows j >= R_b see only themselves: no real row ever sees them and they carry no loss, so the
       C++'s "pad rows see nothing" and this treatment give the same real rows) at positions min(P + j, S-1).
    3. decode pass 2 with grad, self_conditioning_logits = pass-1 softcapped logits (detached) and
       self_conditioning_mask = the coins: the model's own soft-embedding + DiffusionGemmaSelfConditioning path.
       L_diff = sum diff_mask * CE(softcap(lm_head(h2)), diff_targets) / n_diff
    4. (L_diff + ar_weight * L_ar).backward(); gradients accumulate over the micro-batches (and rank files) of
       the step. n_diff / n_ar are the step's global counts from the dump.
  per step: torch.nn.utils.clip_grad_norm_(max_norm) and torch.optim.AdamW(foreach=False, betas, eps 1e-8,
  weight decay on every trainable tensor), lr set from the dump metadata before optimizer.step().
  Frozen (training.md §6.1): router proj / scale / per_expert_scale; layer scalars are buffers; the vision
  tower that transformers instantiates for the text-only checkpoint is not part of the model and is frozen.
  HF's embedding keeps padding_idx = pad_token_id = 0 as in the reference: a lookup of id 0 passes no gradient
  to row 0 of the table (the tied LM head and the self-conditioning path still do). Uniform noise can put id 0
  at a real canvas position, so this matters.

The grad norm compared is the fp64 L2 norm of the fp32 gradients before clipping (dgemma accumulates in fp64);
clipping uses clip_grad_norm_'s own norm. The router top-k margin (gap between the k-th and (k+1)-th expert
log-probabilities, minimum over every valid token and layer of the step) is printed: a near-tie lets two
implementations route a token differently, a legitimate discontinuity rather than a bug.

Two checks:
  free run (default): PyTorch trains its own trajectory from the initial model on the dumped batches. The losses
    agree to ~1e-7 while the weights are identical (steps 1-2: step 1 runs at lr 0) and then drift apart
    chaotically, as two C++ runs with different BLAS kernels also do (Adam normalises every coordinate, so
    rounding noise on a coordinate with a near-zero gradient becomes an O(lr) weight difference); the per-step
    tolerance below grows accordingly. This is what tests/fixtures/train/reference_run.json records.
  --teacher-forced: step s is recomputed from the C++'s OWN weights before step s (its per-step checkpoints,
    converted with `dgemma convert`), so every step is a pure forward/backward comparison held to 1e-5
    (measured ~1e-7). Use it to localise a free-run failure to a step, a loss and a pass.

Usage:
  # replay an existing run (any number of ranks / micro-batches):
  .venv/bin/python scripts/sft_reference_check.py --model M --dumps D --metrics RUN/metrics.jsonl
  # run dgemma init + sft (the reference recipe, INIT_ARGS / SFT_ARGS below) in a work directory, replay it and
  # write the fixture:
  .venv/bin/python scripts/sft_reference_check.py --dgemma build-cpu/app/dgemma --workdir /tmp/sftref \
      --write-fixture tests/fixtures/train/reference_run.json
  # compare another C++ run of the same recipe with a stored PyTorch replay (no PyTorch compute):
  .venv/bin/python scripts/sft_reference_check.py --reference tests/fixtures/train/reference_run.json \
      --metrics RUN/metrics.jsonl
  # teacher-forced (needs per-step checkpoints: made by --dgemma ... --teacher-forced, or --checkpoint-every 1):
  .venv/bin/python scripts/sft_reference_check.py --dgemma build-cpu/app/dgemma --workdir /tmp/tf --teacher-forced
Exit status: 0 when every step is within the tolerance, 1 otherwise, 2 on usage errors.
docs/sft-reference-check.md explains the tolerance and records the measured differences.
"""
import argparse
import configparser
import glob
import hashlib
import json
import math
import os
import re
import shlex
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import load_file
from transformers import DiffusionGemmaForBlockDiffusion
from transformers.cache_utils import DynamicCache
from transformers.utils import logging as hf_logging

# The reference run of the committed fixture (tests/fixtures/train/reference_run.json). Paths (--out, --model,
# --dump-batches) are added by whoever runs them. Built-in tiny preset, built-in tokenizer and tiny task; lr,
# min-lr, betas, weight decay and clip are the dgemma defaults (3e-3, 3e-4, 0.95/0.99, 1e-4, 1.0).
INIT_ARGS = ["--preset", "tiny", "--seed", "7", "--dtype", "f32"]
SFT_ARGS = ["--steps", "20", "--warmup", "5", "--micro-batch", "8", "--accumulation", "2", "--seq-len", "256",
            "--seed", "42", "--checkpoint-every", "0", "--export", "false"]


# Free-run relative tolerance |cpp - pytorch| / |pytorch| per step (1-based) on diffusion_loss, ar_loss and loss,
# and on grad_norm. Steps 1-2 run on identical weights (lr(0) = 0), so only fp32 summation order differs; from
# step 3 on the trajectories drift apart (Adam turns rounding noise on near-zero gradient coordinates into O(lr)
# weight differences), as two C++ runs with different BLAS kernels or thread counts also do. Each bound is 5-200x
# the largest difference measured over the PyTorch replay and C++ runs with 1-2 threads and 9 OpenBLAS core
# types (docs/sft-reference-check.md):  measured max   losses / grad norm
#   steps 1-2   5e-8 / 1.3e-6      steps 3-4   4e-7 / 2e-5
#   steps 5-6   6e-5 / 3e-4        steps 7-20  2e-3 / 3e-2
def free_run_loss_rtol(step: int) -> float:
    return 1e-5 if step <= 2 else 3e-5 if step <= 4 else 1e-3 if step <= 6 else 1e-2


def free_run_gnorm_rtol(step: int) -> float:
    return 2e-5 if step <= 2 else 3e-4 if step <= 4 else 3e-3 if step <= 6 else 0.2


# Teacher-forced: every step is a forward/backward from the same weights (measured <= 1e-7 losses, 6.8e-7 norm).
TEACHER_FORCED_RTOL = 1e-5
# ... and every tensor's gradient, ||g_cpp - g_pt|| / ||g_pt||, with g_cpp recovered from the checkpoints' Adam first
# moments (needs h5py): measured <= 2e-5 (that recovery cancels m_s - beta1 m_{s-1}, so it is noisier than g).
TEACHER_FORCED_GRAD_RTOL = 1e-3


# ---------------------------------------------------------------------------------------------------------------
# Model


def is_frozen(name: str) -> bool:
    return (".router." in name or name.startswith("model.encoder.vision_tower.")
            or name.startswith("model.encoder.embed_vision."))


def load_model(model_dir: str):
    model = DiffusionGemmaForBlockDiffusion.from_pretrained(model_dir, dtype=torch.float32,
                                                            attn_implementation="eager",
                                                            experts_implementation="eager")
    model.train()  # attention_dropout is 0
    for name, p in model.named_parameters(remove_duplicate=False):
        if is_frozen(name):
            p.requires_grad_(False)
    enc, dec = model.model.encoder.language_model, model.model.decoder
    # HF ties the encoder text stack to the decoder stack and the LM head to the embeddings (one parameter each).
    assert enc.layers[0].self_attn.q_proj.weight is dec.layers[0].self_attn.q_proj.weight
    assert model.lm_head.weight is dec.embed_tokens.weight and enc.embed_tokens.weight is dec.embed_tokens.weight
    assert enc.embed_tokens.padding_idx == dec.embed_tokens.padding_idx == model.config.text_config.pad_token_id
    params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]  # deduplicated (tied once)
    return model, params


def softcapped_logits(model, h):
    logits = model.lm_head(h).to(torch.float32)
    cap = model.final_logit_softcapping
    return torch.tanh(logits / cap) * cap


def additive(keep: torch.Tensor) -> torch.Tensor:
    return torch.where(keep, 0.0, torch.finfo(torch.float32).min).to(torch.float32)[:, None]


def encoder_masks(valid: torch.Tensor, W: int) -> dict:
    """training.md §4.1, [B,1,S,S]. Rows with no visible key (padding more than W past the last real token on a
    sliding layer) see themselves: such rows are padding, never attended, never in a loss."""
    B, S = valid.shape
    q = torch.arange(S)[:, None]
    k = torch.arange(S)[None, :]
    causal = (k <= q)[None] & valid[:, None, :]
    sliding = causal & ((q - k) < W)[None]
    eye = torch.eye(S, dtype=torch.bool)[None]
    out = {}
    for name, keep in (("full_attention", causal), ("sliding_attention", sliding)):
        empty = ~keep.any(-1, keepdim=True)
        out[name] = additive(keep | (empty & eye))
    return out


def decoder_masks(prompt_len, canvas_len, S: int, R: int, Bk: int, W: int) -> dict:
    """training.md §4.2, batched as _build_batched_block_mask: [B,1,R,S+R] over keys [encoder 0..S-1 ; canvas]."""
    B = len(prompt_len)
    j = torch.arange(R)[:, None]
    c = torch.arange(S)[None, :]
    jj = torch.arange(R)[None, :]
    bq = j // Bk
    full = torch.zeros(B, R, S + R, dtype=torch.bool)
    slide = torch.zeros(B, R, S + R, dtype=torch.bool)
    for b in range(B):
        P, Rb = int(prompt_len[b]), int(canvas_len[b])
        start = P + Bk * bq                                  # first clean token of the query's block
        row_ok = j < Rb
        enc_full = (c < start) & row_ok                      # strict: clean blocks < bq, the whole prompt
        enc_slide = enc_full & (c >= start - (W - 1))        # block-anchored window, W-1 cached tokens
        can = row_ok & (jj < Rb) & ((jj // Bk) == bq)        # own block, bidirectional
        can = can | torch.eye(R, dtype=torch.bool)           # every row (pad rows included) sees itself
        full[b] = torch.cat([enc_full, can], dim=1)
        slide[b] = torch.cat([enc_slide, can], dim=1)
    return {"full_attention": additive(full), "sliding_attention": additive(slide)}


def load_dump(path: str) -> dict:
    with safe_open(path, "pt") as f:
        d = {k: f.get_tensor(k) for k in f.keys()}
        d["meta"] = f.metadata()
    return d


def micro_batch(model, d: dict, Bk: int, W: int, ar_weight: float, margins: list):
    """One micro-batch forward + backward (gradients accumulate). Returns (L_diff, L_ar) as floats."""
    enc, dec = model.model.encoder.language_model, model.model.decoder
    nl = len(dec.layers)
    clean = d["clean"].long()
    valid = d["clean_valid"].bool()
    canvas = d["canvas"].long()
    P, Rl = d["prompt_len"].long(), d["canvas_len"].long()
    B, S = clean.shape
    R = canvas.shape[1]
    n_diff, n_ar = float(d["meta"]["n_diff"]), float(d["meta"]["n_ar"])
    coin = d["sc_coin"].bool()
    V = model.config.text_config.vocab_size
    canvas_valid = torch.arange(R)[None, :] < Rl[:, None]

    rec = []  # router outputs of this micro-batch, in call order

    def router_hook(mod, args, out):
        logp = out[0].detach().double().log()
        top = logp.topk(mod.config.top_k_experts + 1, dim=-1).values
        rec.append(top[:, -2] - top[:, -1])

    hooks = [layer.router.register_forward_hook(router_hook) for layer in dec.layers]  # shared by the encoder

    cache = DynamicCache()  # no config: a DynamicLayer per layer, sliding layers keep all S keys too
    pos = torch.arange(S)[None].expand(B, S)
    eo = enc(input_ids=clean, attention_mask=encoder_masks(valid, W), position_ids=pos, past_key_values=cache)
    assert len(cache.layers) == nl
    for i, layer in enumerate(cache.layers):
        assert layer.keys.shape[-2] == S and layer.values.shape[-2] == S, (i, layer.keys.shape)
        assert layer.keys.requires_grad and layer.values.requires_grad
    margins.extend(m.view(B, S)[valid] for m in rec[:nl])
    del rec[:]

    elogits = softcapped_logits(model, eo.last_hidden_state)
    ce_a = F.cross_entropy(elogits.reshape(-1, V), d["ar_targets"].long().reshape(-1), reduction="none")
    loss_ar = (ce_a * d["ar_mask"].reshape(-1)).sum() / n_ar

    dpos = torch.clamp(P[:, None] + torch.arange(R)[None, :], max=S - 1)
    masks = decoder_masks(P, Rl, S, R, Bk, W)
    with torch.no_grad():
        h1 = dec(decoder_input_ids=canvas, past_key_values=cache, decoder_attention_mask=masks,
                 decoder_position_ids=dpos).last_hidden_state
        sc_logits = softcapped_logits(model, h1).detach()
    margins.extend(m.view(B, R)[canvas_valid] for m in rec[:nl])
    del rec[:]
    do = dec(decoder_input_ids=canvas, past_key_values=cache, self_conditioning_logits=sc_logits,
             self_conditioning_mask=coin, decoder_attention_mask=masks, decoder_position_ids=dpos)
    margins.extend(m.view(B, R)[canvas_valid] for m in rec[:nl])
    for h in hooks:
        h.remove()

    dlogits = softcapped_logits(model, do.last_hidden_state)
    ce_d = F.cross_entropy(dlogits.reshape(-1, V), d["diff_targets"].long().reshape(-1), reduction="none")
    loss_diff = (ce_d * d["diff_mask"].reshape(-1)).sum() / n_diff

    (loss_diff + ar_weight * loss_ar).backward()
    return loss_diff.item(), loss_ar.item()



# ---------------------------------------------------------------------------------------------------------------
# Runs and replays


def read_options(config_ini: str | None, args) -> dict:
    """The optimizer / loss options of the run: its resolved config.ini (dgemma writes one next to metrics.jsonl),
    then the command-line overrides."""
    o = {"beta1": 0.95, "beta2": 0.99, "weight-decay": 1e-4, "grad-clip": 1.0, "ar-weight": 1.0}
    if config_ini and os.path.exists(config_ini):
        cp = configparser.ConfigParser(inline_comment_prefixes=("#",))
        cp.read_string("[top]\n" + Path(config_ini).read_text())
        for k in o:
            if cp.has_option("top", k):
                o[k] = float(cp.get("top", k))
    for k in o:
        v = getattr(args, k.replace("-", "_"))
        if v is not None:
            o[k] = v
    return o


def dumps_by_step(dumps: str, max_steps: int | None) -> list[list[str]]:
    by_step: dict[int, list[str]] = {}
    for f in sorted(glob.glob(os.path.join(dumps, "step_*_mb*_rank*.safetensors"))):
        m = re.search(r"step_(\d+)_mb(\d+)_rank(\d+)\.safetensors$", f)
        by_step.setdefault(int(m.group(1)), []).append(f)
    steps = sorted(by_step)
    if not steps:
        raise SystemExit(f"no dumps step_*_mb*_rank*.safetensors in {dumps}")
    if steps != list(range(len(steps))):
        raise SystemExit(f"dump steps are not 0..N-1: {steps[:5]}...")
    if max_steps is not None:
        steps = steps[:max_steps]
    return [by_step[s] for s in steps]


def forward_backward_step(model, params, files: list[str], opts: dict) -> dict:
    """Zeroes the gradients and runs every micro-batch (all ranks) of one step; returns its row (no optimizer)."""
    tc = model.config.text_config
    model.zero_grad(set_to_none=True)
    ld = la = 0.0
    margins = []
    lr = None
    for f in files:
        d = load_dump(f)
        lr = float(d["meta"]["lr"])
        a, b = micro_batch(model, d, model.config.canvas_length, tc.sliding_window, opts["ar-weight"], margins)
        ld += a
        la += b
    gnorm64 = math.sqrt(sum(float(p.grad.double().pow(2).sum()) for _, p in params if p.grad is not None))
    return {"lr": lr, "diffusion_loss": ld, "ar_loss": la, "loss": ld + opts["ar-weight"] * la,
            "grad_norm": gnorm64, "router_min_margin": float(torch.cat(margins).min())}


def replay(model_dir: str, dumps: str, opts: dict, max_steps: int | None) -> tuple[list, int]:
    """The free run: PyTorch's own trajectory on the dumped batches."""
    torch.manual_seed(0)
    model, params = load_model(model_dir)
    n_train = sum(p.numel() for _, p in params)
    opt = torch.optim.AdamW([p for _, p in params], lr=0.0, betas=(opts["beta1"], opts["beta2"]), eps=1e-8,
                            weight_decay=opts["weight-decay"], foreach=False)
    steps = dumps_by_step(dumps, max_steps)
    print(f"free run from {model_dir}: {n_train} trainable parameters, canvas block {model.config.canvas_length}, "
          f"window {model.config.text_config.sliding_window}, {len(steps)} steps, options {opts}", flush=True)
    rows = []
    for s, files in enumerate(steps):
        row = {"step": s + 1, **forward_backward_step(model, params, files, opts)}
        torch.nn.utils.clip_grad_norm_([p for _, p in params], max_norm=opts["grad-clip"], foreach=False)
        for g in opt.param_groups:
            g["lr"] = row["lr"]
        opt.step()
        rows.append(row)
        print(f"  step {s + 1}: diffusion {row['diffusion_loss']:.7f}, ar {row['ar_loss']:.7f}, "
              f"grad norm {row['grad_norm']:.6f}", file=sys.stderr, flush=True)
    return rows, n_train


def native_name(hf_name: str) -> tuple[str, bool]:
    """HF parameter name -> (dgemma checkpoint name, whether the last two dims are transposed) (io/hf_names.cpp)."""
    n = hf_name.replace("model.encoder.language_model.", "model.").replace("model.decoder.", "model.")
    for hf, nat in (("experts.gate_up_proj", "moe.experts.gate_and_up_projs"), ("experts.down_proj", "moe.experts.down_projs")):
        if n.endswith(hf):
            return n[: -len(hf)] + nat, True
    return n, False


def read_moments(step_dir: Path) -> dict:
    """exp_avg of every tensor of a dgemma checkpoint step directory, reassembled over the rank files (each holds
    flat slices [flat_range) of the global tensors)."""
    import h5py
    import numpy as np
    out = {}
    for f in sorted(step_dir.glob("rank_*.h5")):
        with h5py.File(f, "r") as h:
            for name, ds in h["exp_avg"].items():
                shape = tuple(int(x) for x in ds.attrs["global_shape"])
                lo, hi = (int(x) for x in ds.attrs["flat_range"])
                if name not in out:
                    out[name] = np.zeros(int(np.prod(shape)), dtype=np.float64), shape
                out[name][0][lo:hi] = ds[...].astype(np.float64)
    return {k: torch.from_numpy(v.reshape(shape)) for k, (v, shape) in out.items()}


def cpp_gradients(checkpoints: Path, s: int, beta1: float, clip: float) -> dict:
    """The C++'s unclipped gradient of step s (1-based): m_s = beta1 m_{s-1} + (1 - beta1) clip_s g_s (AdamW)."""
    m1 = read_moments(checkpoints / f"step_{s:08d}")
    m0 = read_moments(checkpoints / f"step_{s - 1:08d}") if s > 1 else {}
    return {k: (v - beta1 * m0[k] if k in m0 else v) / ((1 - beta1) * clip) for k, v in m1.items()}


def compare_gradients(params, g_cpp: dict) -> list:
    """[(rel, name)] sorted worst first: ||g_cpp - g_pt|| / ||g_pt|| per trainable tensor."""
    out = []
    for name, p in params:
        nat, transposed = native_name(name)
        if nat not in g_cpp:
            out.append((math.inf, f"{name} (no {nat} in the checkpoint)"))
            continue
        gp = p.grad.double() if p.grad is not None else torch.zeros_like(p, dtype=torch.float64)
        gc = g_cpp[nat].transpose(-1, -2) if transposed else g_cpp[nat]
        if gc.shape != gp.shape:
            out.append((math.inf, f"{name} (shape {tuple(gc.shape)} vs {tuple(gp.shape)})"))
            continue
        out.append((float((gc - gp).norm() / gp.norm().clamp(min=1e-30)), nat))
    return sorted(out, reverse=True)


def teacher_forced(model_dir: str, dumps: str, checkpoints: Path, dgemma: str, opts: dict,
                   max_steps: int | None) -> tuple[list, int]:
    """Step s from the C++'s weights after step s-1 (the initial model for s = 1): checkpoint step_{s-1}
    converted to an f32 HF directory by `dgemma convert`, loaded into the same module tree."""
    model, params = load_model(model_dir)
    n_train = sum(p.numel() for _, p in params)
    steps = dumps_by_step(dumps, max_steps)
    print(f"teacher-forced from {checkpoints}: {len(steps)} steps", flush=True)
    state_names = set(model.state_dict().keys())
    cpp = [json.loads(line) for line in (checkpoints.parent / "metrics.jsonl").read_text().splitlines() if line.strip()]
    try:
        import h5py  # noqa: F401
        grads = True
    except ImportError:
        grads = False
        print("  (no h5py: per-tensor gradients not compared, only losses and grad norms)", flush=True)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for s, files in enumerate(steps):
            if s > 0:
                ck = checkpoints / f"step_{s:08d}"
                if not ck.is_dir():
                    raise SystemExit(f"{ck} is missing: run dgemma sft with --checkpoint-every 1")
                out = Path(tmp) / f"w{s}"
                r = subprocess.run([dgemma, "convert", "--from", "h5", "--to", "hf", "--in", str(ck), "--out", str(out),
                                    "--dtype", "f32"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
                if r.returncode != 0:
                    raise SystemExit(f"dgemma convert of {ck} failed:\n{r.stdout[-2000:]}")
                sd = {}
                for f in sorted(out.glob("*.safetensors")):
                    sd.update(load_file(str(f)))
                unknown = [k for k in sd if k not in state_names]
                if unknown:
                    raise SystemExit(f"checkpoint tensors the HF model does not have: {unknown[:5]}")
                with torch.no_grad():
                    model.load_state_dict(sd, strict=False)
                subprocess.run(["rm", "-rf", str(out)], check=True)
            row = {"step": s + 1, **forward_backward_step(model, params, files, opts)}
            if grads and (checkpoints / f"step_{s + 1:08d}").is_dir() and s < len(cpp):
                worst = compare_gradients(params, cpp_gradients(checkpoints, s + 1, opts["beta1"], cpp[s]["clip_coef"]))
                row["grad_worst"] = worst[:3]
            rows.append(row)
            extra = "" if "grad_worst" not in row else \
                "; worst tensor gradients " + ", ".join(f"{n} {r:.1e}" for r, n in row["grad_worst"])
            print(f"  step {s + 1}: diffusion {row['diffusion_loss']:.7f}, ar {row['ar_loss']:.7f}, "
                  f"grad norm {row['grad_norm']:.6f}{extra}", file=sys.stderr, flush=True)
    return rows, n_train


def rel(a: float, b: float) -> float:
    return abs(a - b) / max(abs(b), 1e-30)


def compare(rows, cpp, loss_rtol, gnorm_rtol):
    """Prints the table; returns (ok, per-step relative differences)."""
    print(f"{'step':>4} {'lr':>9} | {'diffusion C++':>13} {'PyTorch':>11} {'rel':>8} | {'ar C++':>11} {'PyTorch':>11} "
          f"{'rel':>8} | {'gnorm C++':>10} {'PyTorch':>10} {'rel':>8} | {'tol':>7} {'gtol':>7} {'margin':>8}")
    ok = True
    diffs = []
    if len(cpp) < len(rows):
        print(f"FAIL: metrics.jsonl has {len(cpp)} steps, the PyTorch replay {len(rows)}")
        ok = False
    for r in rows:
        s = r["step"]
        if s > len(cpp):
            break
        c = cpp[s - 1]
        if c["step"] != s:
            raise SystemExit(f"metrics.jsonl line {s} is step {c['step']}")
        rd, ra, rl, rg = (rel(c["diffusion_loss"], r["diffusion_loss"]), rel(c["ar_loss"], r["ar_loss"]),
                          rel(c["loss"], r["loss"]), rel(c["grad_norm"], r["grad_norm"]))
        tl, tg = loss_rtol(s), gnorm_rtol(s)
        bad = max(rd, ra, rl) > tl or rg > tg
        worst = r.get("grad_worst")
        bad_grad = worst is not None and not worst[0][0] <= TEACHER_FORCED_GRAD_RTOL
        bad = bad or bad_grad
        ok = ok and not bad
        diffs.append({"step": s, "diffusion": rd, "ar": ra, "loss": rl, "grad_norm": rg})
        margin = r.get("router_min_margin")
        print(f"{s:>4} {r['lr']:>9.3e} | {c['diffusion_loss']:>13.7f} {r['diffusion_loss']:>11.7f} {rd:>8.1e} | "
              f"{c['ar_loss']:>11.7f} {r['ar_loss']:>11.7f} {ra:>8.1e} | {c['grad_norm']:>10.5f} "
              f"{r['grad_norm']:>10.5f} {rg:>8.1e} | {tl:>7.0e} {tg:>7.0e} "
              f"{'' if margin is None else format(margin, '8.1e')}{'  FAIL' if bad else ''}")
        if worst is not None and (bad_grad or worst[0][0] > TEACHER_FORCED_GRAD_RTOL / 10):
            print(f"       worst tensor gradients ||cpp - pt|| / ||pt||: "
                  + ", ".join(f"{n} {rr:.1e}" for rr, n in worst)
                  + (f"  FAIL (> {TEACHER_FORCED_GRAD_RTOL:.0e})" if bad_grad else ""))
    worsts = [(r["grad_worst"][0], r["step"]) for r in rows if r.get("grad_worst")]
    if worsts:
        (wr, wn), ws = max(worsts)
        print(f"per-tensor gradients: worst ||cpp - pt|| / ||pt|| {wr:.1e} ({wn}, step {ws}); "
              f"tolerance {TEACHER_FORCED_GRAD_RTOL:.0e}")
    for key in ("diffusion", "ar", "grad_norm"):
        if diffs:
            picks = [d for d in diffs if d["step"] in (1, 10, 20)]
            print(f"rel diff {key:>9}: " + ", ".join(f"step {d['step']} {d[key]:.1e}" for d in picks)
                  + f"; max over steps {max(d[key] for d in diffs):.1e}")
    return ok, diffs


# ---------------------------------------------------------------------------------------------------------------


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def run_dgemma(dgemma: str, workdir: Path, init_args: list, sft_args: list):
    workdir.mkdir(parents=True, exist_ok=True)
    model, run, dumps = workdir / "model", workdir / "run", workdir / "dumps"
    for p in (model, run, dumps):
        if p.exists():
            subprocess.run(["rm", "-rf", str(p)], check=True)
    env = dict(os.environ, OPENBLAS_NUM_THREADS=os.environ.get("OPENBLAS_NUM_THREADS", "1"))
    cmds = [[dgemma, "init", *init_args, "--out", str(model)],
            [dgemma, "sft", "--model", str(model), *sft_args, "--out", str(run), "--dump-batches", str(dumps)]]
    for cmd in cmds:
        print("+", shlex.join(cmd), flush=True)
        r = subprocess.run(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        if r.returncode != 0:
            print(r.stdout[-4000:])
            raise SystemExit(f"dgemma {cmd[1]} failed with exit {r.returncode}")
    return model, run, dumps


def arg_value(args: list | None, name: str, default):
    """The value of option `name` in an argument list (None when the list is unknown)."""
    if args is None:
        return None
    return int(args[args.index(name) + 1]) if name in args else default


def write_fixture(path: str, rows, diffs, init_args, sft_args, model_sha, n_train, opts):
    """One step per line with the keys in a fixed order, so that tests/cli/test_sft_reference.sh can read it with
    sed and awk (no JSON tool at test time)."""
    import transformers
    d_by_step = {d["step"]: d for d in diffs}
    lines = [
        "{",
        f'  "made_by": "scripts/sft_reference_check.py --dgemma DGEMMA --workdir DIR --write-fixture {path}",',
        '  "description": "PyTorch free-run replay (HF DiffusionGemma modules, autograd, torch.optim.AdamW '
        'foreach=False, clip_grad_norm_) of a dgemma sft run on the batches and noise it dumped. '
        'tests/cli/test_sft_reference.sh reruns dgemma init + sft with init_args / sft_args (plus --out and '
        '--model) and checks every step: |cpp - pytorch| / |pytorch| <= rtol for diffusion_loss, ar_loss and '
        'loss, <= gnorm_rtol for grad_norm. cpp_* and measured_rel are the C++ run this file was made from. '
        'See docs/sft-reference-check.md.",',
        f'  "torch": "{torch.__version__}",',
        f'  "transformers": "{transformers.__version__}",',
        f'  "init_args": {json.dumps(init_args)},',
        f'  "sft_args": {json.dumps(sft_args)},',
        '  "commands": ' + json.dumps(None if init_args is None else [
            "OPENBLAS_NUM_THREADS=1 dgemma init " + " ".join(init_args) + " --out MODEL",
            "OPENBLAS_NUM_THREADS=1 dgemma sft --model MODEL " + " ".join(sft_args) + " --out RUN --dump-batches DUMPS",
            "python scripts/sft_reference_check.py --model MODEL --dumps DUMPS --metrics RUN/metrics.jsonl"]) + ",",
        f'  "init_seed": {json.dumps(arg_value(init_args, "--seed", 0))},',
        f'  "sft_seed": {json.dumps(arg_value(sft_args, "--seed", 42))},',
        f'  "model_sha256": "{model_sha}",',
        f'  "trainable_parameters": {n_train},',
        f'  "optimizer": {json.dumps(opts)},',
        '  "steps": [',
    ]
    for i, r in enumerate(rows):
        s, dd = r["step"], d_by_step[r["step"]]
        lines.append(
            f'    {{"step": {s}, "rtol": {free_run_loss_rtol(s):.0e}, "gnorm_rtol": {free_run_gnorm_rtol(s):.0e}, '
            f'"lr": {r["lr"]!r}, "diffusion_loss": {r["diffusion_loss"]!r}, "ar_loss": {r["ar_loss"]!r}, '
            f'"loss": {r["loss"]!r}, "grad_norm": {r["grad_norm"]!r}, '
            f'"router_min_margin": {r["router_min_margin"]:.3e}, '
            f'"cpp_diffusion_loss": {r["cpp"]["diffusion_loss"]!r}, "cpp_ar_loss": {r["cpp"]["ar_loss"]!r}, '
            f'"cpp_grad_norm": {r["cpp"]["grad_norm"]!r}, '
            f'"measured_rel": {{"diffusion": {dd["diffusion"]:.2e}, "ar": {dd["ar"]:.2e}, "total": {dd["loss"]:.2e}, '
            f'"gnorm": {dd["grad_norm"]:.2e}}}}}' + ("," if i + 1 < len(rows) else ""))
    lines += ["  ]", "}"]
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text("\n".join(lines) + "\n")
    json.loads(Path(path).read_text())  # valid JSON
    print(f"wrote {path}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog="More in the module docstring and docs/sft-reference-check.md.")
    ap.add_argument("--model", help="initial HF model directory of the run (what `dgemma sft --model` read)")
    ap.add_argument("--dumps", help="the run's --dump-batches directory")
    ap.add_argument("--metrics", help="the run's metrics.jsonl")
    ap.add_argument("--config", help="the run's config.ini (default: next to metrics.jsonl)")
    ap.add_argument("--dgemma", help="the dgemma binary: runs `dgemma init` + `dgemma sft` first when --workdir is "
                    "given; needed by --teacher-forced for `dgemma convert`")
    ap.add_argument("--workdir", help="with --dgemma: run init + sft here (model/, run/, dumps/ are replaced)")
    ap.add_argument("--init-args", help="dgemma init arguments for --workdir (default: %(default)s)",
                    default=shlex.join(INIT_ARGS))
    ap.add_argument("--sft-args", help="dgemma sft arguments for --workdir (default: %(default)s)",
                    default=shlex.join(SFT_ARGS))
    ap.add_argument("--teacher-forced", action="store_true", help="recompute every step from the C++'s own weights "
                    "before it (its per-step checkpoints; --workdir runs add --checkpoint-every 1)")
    ap.add_argument("--reference", metavar="JSON", help="compare --metrics with a stored PyTorch replay (a fixture "
                    "or --save-replay output) instead of replaying")
    ap.add_argument("--steps", type=int, help="replay only the first N steps")
    ap.add_argument("--rtol", type=float, help="one relative tolerance for every step and quantity instead of the "
                    "per-step schedule")
    ap.add_argument("--write-fixture", metavar="PATH", help="free run only, needs --dgemma --workdir (the fixture "
                    "records the commands run): write the PyTorch per-step losses and grad norms, the commands, seeds "
                    "and tolerances as JSON, if every step passed")
    ap.add_argument("--save-replay", metavar="PATH", help="write the same JSON whatever the verdict")
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    for k in ("beta1", "beta2", "weight-decay", "grad-clip", "ar-weight"):
        ap.add_argument(f"--{k}", type=float, help=f"override the run's {k} (default: its config.ini)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    hf_logging.set_verbosity_error()  # the vision tower is absent from text-only checkpoints: a long MISSING report

    init_args, sft_args = shlex.split(args.init_args), shlex.split(args.sft_args)
    if args.reference:
        if not args.metrics:
            ap.error("--reference needs --metrics")
        ref = json.loads(Path(args.reference).read_text())
        rows = ref["steps"][: args.steps] if args.steps else ref["steps"]
        cpp = [json.loads(line) for line in Path(args.metrics).read_text().splitlines() if line.strip()]
        loss_rtol = (lambda s: args.rtol) if args.rtol is not None else free_run_loss_rtol
        gnorm_rtol = (lambda s: args.rtol) if args.rtol is not None else free_run_gnorm_rtol
        ok, _ = compare(rows, cpp, loss_rtol, gnorm_rtol)
        print("OK: every step within tolerance" if ok else "FAIL: some step is outside the tolerance")
        return 0 if ok else 1

    if args.workdir:
        if not args.dgemma:
            ap.error("--workdir needs --dgemma")
        if args.teacher_forced:
            sft_args = [a for a in sft_args]
            if "--checkpoint-every" in sft_args:
                sft_args[sft_args.index("--checkpoint-every") + 1] = "1"
            else:
                sft_args += ["--checkpoint-every", "1"]
        model, run, dumps = run_dgemma(args.dgemma, Path(args.workdir), init_args, sft_args)
        args.model, args.dumps, args.metrics = str(model), str(dumps), str(run / "metrics.jsonl")
    elif args.write_fixture:
        ap.error("--write-fixture needs --dgemma and --workdir (the fixture records the commands it ran)")
    if not (args.model and args.dumps and args.metrics):
        ap.error("give --model, --dumps and --metrics (or --dgemma and --workdir, or --reference and --metrics)")
    if args.teacher_forced and (args.write_fixture or args.save_replay):
        ap.error("--write-fixture / --save-replay record the free run, not --teacher-forced")
    if args.teacher_forced and not args.dgemma:
        ap.error("--teacher-forced needs --dgemma (for dgemma convert)")
    opts = read_options(args.config or str(Path(args.metrics).parent / "config.ini"), args)
    cpp = [json.loads(line) for line in Path(args.metrics).read_text().splitlines() if line.strip()]

    if args.teacher_forced:
        rows, n_train = teacher_forced(args.model, args.dumps, Path(args.metrics).parent / "checkpoints", args.dgemma,
                                       opts, args.steps)
        tol = args.rtol if args.rtol is not None else TEACHER_FORCED_RTOL
        ok, diffs = compare(rows, cpp, lambda s: tol, lambda s: tol)
    else:
        rows, n_train = replay(args.model, args.dumps, opts, args.steps)
        loss_rtol = (lambda s: args.rtol) if args.rtol is not None else free_run_loss_rtol
        gnorm_rtol = (lambda s: args.rtol) if args.rtol is not None else free_run_gnorm_rtol
        ok, diffs = compare(rows, cpp, loss_rtol, gnorm_rtol)
        for r in rows:
            if r["step"] <= len(cpp):
                r["cpp"] = cpp[r["step"] - 1]
        rows = [r for r in rows if "cpp" in r]
        if not args.workdir:  # an existing run: its commands are not known here
            init_args = sft_args = None
        sha = sha256(Path(args.model) / "model.safetensors") if (Path(args.model) / "model.safetensors").exists() else ""
        if args.save_replay:
            write_fixture(args.save_replay, rows, diffs, init_args, sft_args, sha, n_train, opts)
        if args.write_fixture:
            if ok:
                write_fixture(args.write_fixture, rows, diffs, init_args, sft_args, sha, n_train, opts)
            else:
                print("not writing the fixture: the run is outside the tolerance")
    print("OK: every step within tolerance" if ok else "FAIL: some step is outside the tolerance")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
