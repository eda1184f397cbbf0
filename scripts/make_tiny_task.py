#!/usr/bin/env python3
"""Writes the built-in tiny SFT task: jobs/examples/tiny-task/{train,heldout}.jsonl.

The task: "Add one to each digit: 3 8 1 9" -> "4 9 2 0" (each digit plus one, 9 wraps to 0), on
sequences of 3 to 5 digits. A model must learn an aligned copy through the encoder K/V plus a
10-entry lookup, so it generalises to digit strings it never saw: the held-out prompts are digit
strings absent from the training set. An untrained model scores ~0% exact match (it has to emit the
right digits, spaces, and end with EOS); the tiny preset trained for the default steps scores >= 90%.

Deterministic (fixed seed), standard library only. Usage:
    python3 scripts/make_tiny_task.py [--out jobs/examples/tiny-task] [--train 6000] [--heldout 200]
"""
import argparse
import json
import os
import random


def answer(digits):
    return " ".join(str((d + 1) % 10) for d in digits)


def prompt(digits):
    return "Add one to each digit: " + " ".join(str(d) for d in digits)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "..", "jobs", "examples", "tiny-task"))
    ap.add_argument("--train", type=int, default=6000)
    ap.add_argument("--heldout", type=int, default=200)
    ap.add_argument("--seed", type=int, default=20261123)
    a = ap.parse_args()
    rng = random.Random(a.seed)
    seen = set()

    def draw():
        while True:
            n = rng.randint(3, 5)
            d = tuple(rng.randrange(10) for _ in range(n))
            if d not in seen:
                seen.add(d)
                return d

    heldout = [draw() for _ in range(a.heldout)]  # drawn first: never in the training set
    train = [draw() for _ in range(a.train)]
    os.makedirs(a.out, exist_ok=True)
    with open(os.path.join(a.out, "train.jsonl"), "w") as f:
        for d in train:
            f.write(json.dumps({"messages": [{"role": "user", "content": prompt(d)},
                                             {"role": "assistant", "content": answer(d)}]}) + "\n")
    with open(os.path.join(a.out, "heldout.jsonl"), "w") as f:
        for i, d in enumerate(heldout):
            f.write(json.dumps({"id": f"heldout-{i:04d}", "prompt": prompt(d), "reference": answer(d)}) + "\n")
    print(f"wrote {len(train)} training and {len(heldout)} held-out examples to {os.path.normpath(a.out)}")


if __name__ == "__main__":
    main()
