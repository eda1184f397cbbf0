#!/usr/bin/env python3
"""Plots a dgemma sft metrics.jsonl to a PNG: losses (total, diffusion, AR), gradient norm, learning rate.

Usage: python3 scripts/plot_metrics.py RUN/metrics.jsonl [--out RUN/metrics.png] [--smooth 10]
Needs matplotlib (pip install -r scripts/requirements-plot.txt).
"""
import argparse
import json
import sys


def smooth(values, window):
    if window <= 1:
        return values
    out, acc = [], 0.0
    for i, v in enumerate(values):
        acc += v
        if i >= window:
            acc -= values[i - window]
        out.append(acc / min(i + 1, window))
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("metrics")
    ap.add_argument("--out", help="PNG path (default: next to the metrics file)")
    ap.add_argument("--smooth", type=int, default=10, help="moving-average window for the loss curves")
    a = ap.parse_args()
    rows = []
    with open(a.metrics) as f:
        for n, line in enumerate(f, 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as e:
                    sys.exit(f"{a.metrics}:{n}: not JSON ({e})")
    if not rows:
        sys.exit(f"{a.metrics}: no metrics")
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        sys.exit("matplotlib is missing: pip install -r scripts/requirements-plot.txt")
    step = [r["step"] for r in rows]
    fig, ax = plt.subplots(3, 1, figsize=(8, 9), sharex=True)
    for key, label in (("loss", "total"), ("diffusion_loss", "diffusion"), ("ar_loss", "encoder AR")):
        ax[0].plot(step, smooth([r[key] for r in rows], a.smooth), label=label)
    ax[0].set_ylabel(f"loss (moving average {a.smooth})")
    ax[0].set_yscale("log")
    ax[0].legend()
    ax[1].plot(step, [r["grad_norm"] for r in rows])
    ax[1].set_ylabel("grad norm (before clip)")
    ax[1].set_yscale("log")
    ax[2].plot(step, [r["lr"] for r in rows])
    ax[2].set_ylabel("learning rate")
    ax[2].set_xlabel("step")
    fig.suptitle(a.metrics)
    fig.tight_layout()
    out = a.out or a.metrics.rsplit(".", 1)[0] + ".png"
    fig.savefig(out, dpi=120)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
