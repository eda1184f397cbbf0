#!/usr/bin/env python3
"""Writes the seed corpora fuzz/corpus/<target>/ from files of the repository (standard library only).

    python3 fuzz/make_seeds.py [--manifest DIR/manifest.json ...]

Seeds are named seed-*; entries the fuzzer found and we kept are named found-* and are never touched
here. --manifest takes manifest.json files of real checkpoints (e.g. written by `dgemma convert` of
tests/fixtures/model/tiny6, see docs/fuzzing.md); without it the manifest seeds are synthetic only.
"""
import argparse
import hashlib
import json
import os
import struct
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CORPUS = os.path.join(ROOT, "fuzz", "corpus")


def out(target, name, data):
    d = os.path.join(CORPUS, target)
    os.makedirs(d, exist_ok=True)
    if isinstance(data, str):
        data = data.encode("utf-8")
    with open(os.path.join(d, "seed-" + name), "wb") as f:
        f.write(data)


def read(rel, mode="r"):
    with open(os.path.join(ROOT, rel), mode) as f:
        return f.read()


# ---- safetensors -------------------------------------------------------------------------------------
BITS = {"BOOL": 8, "F4": 4, "F6_E2M3": 6, "F6_E3M2": 6, "U8": 8, "I8": 8, "F8_E5M2": 8, "F8_E4M3": 8,
        "F8_E8M0": 8, "F8_E4M3FNUZ": 8, "F8_E5M2FNUZ": 8, "I16": 16, "U16": 16, "F16": 16, "BF16": 16,
        "I32": 32, "U32": 32, "F32": 32, "C64": 64, "F64": 64, "I64": 64, "U64": 64}


def st_file(tensors, metadata={"format": "pt"}, pad=True, sort=True):
    """tensors: list of (name, dtype, shape, bytes) -> safetensors bytes in the reference layout."""
    header, data = {}, b""
    if metadata is not None:
        header["__metadata__"] = metadata
    items = sorted(tensors, key=lambda t: (-list(BITS).index(t[1]), t[0])) if sort else tensors
    for name, dtype, shape, raw in items:
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [len(data), len(data) + len(raw)]}
        data += raw
    h = json.dumps(header, separators=(",", ":")).encode()
    if pad:
        h += b" " * (-len(h) % 8)
    return struct.pack("<Q", len(h)) + h + data


def nbytes(dtype, shape):
    n = 1
    for d in shape:
        n *= d
    return n * BITS[dtype] // 8


def real_tensors(rel, limit_bytes):
    """The small tensors of a real safetensors file of the repository."""
    b = read(rel, "rb")
    n = struct.unpack("<Q", b[:8])[0]
    h = json.loads(b[8:8 + n])
    got = []
    for name, e in h.items():
        if name == "__metadata__":
            continue
        s, t = e["data_offsets"]
        if t - s <= limit_bytes:
            got.append((name, e["dtype"], e["shape"], b[8 + n + s:8 + n + t]))
    return h.get("__metadata__"), sorted(got)


def safetensors_seeds():
    meta, ts = real_tensors("tests/fixtures/model/tiny6/model.safetensors", 256)
    out("safetensors", "tiny6-small-tensors", st_file(ts[:12], meta))
    out("safetensors", "tiny6-norms", st_file([t for t in ts if "norm" in t[0]][:6], meta))
    meta2, ts2 = real_tensors("tests/fixtures/train/tiny6_sft_grads.safetensors", 128)
    out("safetensors", "sft-grads-small", st_file(ts2[:8], meta2))
    out("safetensors", "reference-small", st_file(real_tensors("tests/fixtures/model/tiny6/reference.safetensors", 512)[1][:6]))
    # every dtype, small shapes (sub-byte ones filling whole bytes)
    every = []
    for i, (dt, bits) in enumerate(BITS.items()):
        shape = [2, 4] if bits in (4, 6) else [3]
        every.append(("t%02d.%s" % (i, dt.lower()), dt, shape, bytes(range(nbytes(dt, shape)))))
    out("safetensors", "every-dtype", st_file(every))
    out("safetensors", "empty-header", st_file([], None))
    out("safetensors", "metadata-only", st_file([], {"format": "pt", "note": "x"}))
    out("safetensors", "scalar-and-empty", st_file([("s", "F32", [], b"\0\0\x80?"), ("z", "F32", [0, 7], b""),
                                                   ("z2", "BF16", [4, 0], b"")]))
    out("safetensors", "unaligned-unsorted", st_file([("a", "U8", [3], b"abc"), ("b", "F32", [2], b"\0" * 8),
                                                     ("c", "I64", [1], b"\x01" + b"\0" * 7)], None, sort=False))
    out("safetensors", "unpadded", st_file([("w", "F16", [2, 2], b"\0<" * 4)], pad=False))
    out("safetensors", "metadata-null", st_file([("w", "I32", [1], b"\x07\0\0\0")], metadata=None).replace(
        b'{"w"', b'{"__metadata__":null,"w"', 1))


# ---- tokenizer.json ------------------------------------------------------------------------------------
def tokenizer_seeds():
    text = read("tests/fixtures/tokenizer/tokenizer.json")
    out("tokenizer", "fixture-full.json", text)
    t = json.loads(text)
    keep = {k: v for k, v in t["model"]["vocab"].items() if v < 400}
    merges = [m for m in t["model"]["merges"]
              if (m[0] if isinstance(m, list) else m.split(" ")[0]) in keep
              and (m[1] if isinstance(m, list) else m.split(" ")[1]) in keep
              and ((m[0] + m[1]) if isinstance(m, list) else m.replace(" ", "")) in keep]
    small = dict(t)
    small["model"] = dict(t["model"], vocab=keep, merges=merges)
    small["added_tokens"] = [a for a in t["added_tokens"] if a["id"] < 400]
    out("tokenizer", "fixture-small.json", json.dumps(small, ensure_ascii=False))
    out("tokenizer", "merges-as-strings.json",
        json.dumps(dict(small, model=dict(small["model"], merges=[" ".join(m) for m in merges[:60]])),
                   ensure_ascii=False))
    base_vocab = {"<pad>": 0, "<eos>": 1, "<bos>": 2, "<unk>": 3}
    for i in range(256):
        base_vocab["<0x%02X>" % i] = 4 + i
    for i, s in enumerate(["a", "b", "ab", "\u2581", "\u2581a", "c", "abc", "\n"]):
        base_vocab[s] = 260 + i

    def tok(**kw):
        d = {"version": "1.0", "truncation": None, "padding": None,
             "added_tokens": [{"id": 0, "content": "<pad>", "single_word": False, "lstrip": False, "rstrip": False,
                               "normalized": False, "special": True},
                              {"id": 2, "content": "<bos>", "single_word": False, "lstrip": False, "rstrip": False,
                               "normalized": False, "special": True},
                              {"id": 300, "content": "<|turn>", "single_word": False, "lstrip": True, "rstrip": True,
                               "normalized": True, "special": False}],
             "normalizer": None, "pre_tokenizer": None, "post_processor": None, "decoder": None,
             "model": {"type": "BPE", "dropout": None, "unk_token": "<unk>", "continuing_subword_prefix": None,
                       "end_of_word_suffix": None, "fuse_unk": True, "byte_fallback": True, "ignore_merges": False,
                       "vocab": base_vocab, "merges": [["a", "b"], ["ab", "c"], ["\u2581", "a"]]}}
        for k, v in kw.items():
            if k == "model":
                d["model"].update(v)
            else:
                d[k] = v
        return json.dumps(d, ensure_ascii=False)

    out("tokenizer", "minimal.json", tok())
    out("tokenizer", "norm-seq.json", tok(normalizer={"type": "Sequence", "normalizers": [
        {"type": "Prepend", "prepend": "\u2581"}, {"type": "Replace", "pattern": {"String": " "}, "content": "\u2581"}]}))
    for b in ["Removed", "Isolated", "MergedWithPrevious", "MergedWithNext", "Contiguous"]:
        out("tokenizer", "split-%s.json" % b.lower(), tok(pre_tokenizer={"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"String": " "}, "behavior": b, "invert": False}]}))
    out("tokenizer", "decoders.json", tok(decoder={"type": "Sequence", "decoders": [
        {"type": "Replace", "pattern": {"String": "\u2581"}, "content": " "}, {"type": "ByteFallback"},
        {"type": "Fuse"}, {"type": "Strip", "content": " ", "start": 1, "stop": 0}]}))
    out("tokenizer", "no-fallback-ignore-merges.json",
        tok(model={"byte_fallback": False, "fuse_unk": False, "ignore_merges": True}))
    out("tokenizer", "template-post.json", tok(post_processor=t["post_processor"]))


# ---- SFT and generate JSONL ---------------------------------------------------------------------------------
def lines(rel, picks):
    all_lines = read(rel).splitlines(keepends=True)
    return "".join(all_lines[i] for i in picks if i < len(all_lines))


def sft_seeds():
    out("sft_jsonl", "tiny-train-3.jsonl", lines("jobs/examples/tiny-task/train.jsonl", [0, 1, 2]))
    out("sft_jsonl", "tiny-train-far.jsonl", lines("jobs/examples/tiny-task/train.jsonl", [1000, 3000, 5999]))
    out("sft_jsonl", "tiny-heldout-4.jsonl", lines("jobs/examples/tiny-task/heldout.jsonl", [0, 50, 100, 199]))
    out("sft_jsonl", "forms.jsonl", "\n".join(json.dumps(x) for x in [
        {"prompt": "What is 2+2?", "response": "4"},
        {"prompt": "Say hi", "completion": "hi"},
        {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
                      {"role": "assistant", "content": "<|channel>thought\nhmm<channel|>Hello!"}]},
        {"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b", "weight": 0},
                      {"role": "user", "content": "c"}, {"role": "model", "content": "d", "weight": 1}]},
        {"messages": [{"role": "developer", "content": "x"}, {"role": "user", "content": "y"},
                      {"role": "assistant", "content": "z" * 300}], "extra": [1, 2]},
    ]) + "\n\n  \n")
    out("sft_jsonl", "bad-lines.jsonl", "\n".join([
        '{"messages": []}', '{"prompt": 1, "response": "x"}', '[1,2]', '{"messages": [{"role": "tool", "content": "x"}]}',
        '{"messages": [{"role": "user", "content": "q"}]}', '{"prompt": "p", "response": "   "}',
        '{"prompt": "p", "response": "ok"}', '{"a":1,"a":2}', '{"prompt": "\\u0000", "response": "nul"}']) + "\n")


def generate_seeds():
    out("generate_jsonl", "prompts.jsonl", read("jobs/examples/prompts.jsonl"))
    held = read("jobs/examples/tiny-task/heldout.jsonl").splitlines()[:3]
    reqs = []
    for i, l in enumerate(held):
        j = json.loads(l)
        msgs = j.get("messages") or [{"role": "user", "content": j.get("prompt", "")}]
        reqs.append(json.dumps({"id": i, "messages": msgs[:-1] or msgs, "reference": msgs[-1]["content"],
                                "max_new_tokens": 8}))
    out("generate_jsonl", "heldout-eval.jsonl", "\n".join(reqs) + "\n")
    out("generate_jsonl", "forms.jsonl", "\n".join(json.dumps(x) for x in [
        {"id": "a", "prompt": "hello"},
        {"custom_id": "b", "body": {"messages": [{"role": "user", "content": "x"}], "max_completion_tokens": 3},
         "reference": "y"},
        {"id": 7, "messages": [{"role": "system", "content": "s"}, {"role": "user", "content": "u"},
                               {"role": "assistant", "content": "m"}, {"role": "user", "content": "v"}],
         "max_tokens": 1},
    ]) + "\n   \n")
    out("generate_jsonl", "bad-lines.jsonl", "\n".join([
        '{"id": "a", "prompt": "x"}', '{"id": "a", "prompt": "dup"}', '{"prompt": "no id"}', '{"id": 1.5, "prompt": "x"}',
        '{"custom_id": "c"}', '{"id": "m", "messages": [{"role": "tool", "content": "x"}]}',
        '{"id": "t", "prompt": "x", "max_tokens": 0}', '{"id": "r", "prompt": "x", "reference": 3}', 'not json',
        '{"id": "big", "prompt": "x", "max_tokens": 99999999999}']) + "\n")
    m = [{"role": "user", "content": "x"}]
    out("generate_jsonl", "openai-fields.jsonl", "\n".join(json.dumps(x) for x in [
        {"custom_id": "a", "method": "POST", "url": "/v1/chat/completions",
         "body": {"model": "m", "messages": m, "temperature": 0.5, "seed": -3, "stop": ["\n", "x"], "n": 1}},
        {"custom_id": "b", "body": {"messages": m, "temperature": 0}},
        {"custom_id": "c", "body": {"messages": m, "stop": ""}},
        {"custom_id": "d", "body": {"messages": m, "top_p": 0.9, "tools": []}},
        {"custom_id": "e", "url": "/v1/embeddings", "body": {"messages": m}},
        {"custom_id": 5, "body": {"messages": m}},
        {"id": "f", "prompt": "x", "seed": 18446744073709551615, "temperature": 2, "stop": "y"},
    ]) + "\n")


# ---- INI job files --------------------------------------------------------------------------------------
def ini_seeds():
    for f in sorted(os.listdir(os.path.join(ROOT, "jobs", "examples"))):
        if f.endswith(".ini"):
            out("job_ini", f, read("jobs/examples/" + f))
    out("job_ini", "sections.ini", "# comment\nmodel = m\n[train]\nmax-steps = 3\n[lr]\nwarmup=1\n\n; other\nseed=0x10\n")
    out("job_ini", "convert.ini", "from = hf\nto = h5\nin = tests/fixtures/model/tiny6\nout = ck\nstep = 5\n"
                                  "max-shard-size = 400KB\ndtype = bf16\noverwrite = true\n")
    out("job_ini", "bad.ini", "seed = notanumber\nseed = 2\n[\nkey\n= value\nunknown-option = 1\n")


# ---- checkpoint manifests -------------------------------------------------------------------------------------
def manifest_seeds(real):
    def shard(file, dataset, checksum=True, **sl):
        s = {"file": file, "dataset": dataset}
        s.update(sl)
        if checksum:
            s["checksum"] = "xxh64:" + hashlib.sha256((file + dataset).encode()).hexdigest()[:16]
        return s

    def manifest(tensors, world=2, sections=None, rank_sections=None, step=10):
        return json.dumps({"dgemma_version": "0.1.0", "files": ["rank_%05d.h5" % r for r in range(world)],
                           "format": "dgemma-checkpoint", "format_version": 1,
                           "rank_sections": rank_sections or {}, "sections": sections or {}, "step": step,
                           "tensors": tensors, "world_size": world}, indent=2, sort_keys=True)

    for i, path in enumerate(real):
        m = json.load(open(path))
        if i == 0:  # one whole real manifest (~60 KB); the others trimmed
            out("checkpoint_manifest", "real-%d-full.json" % i, open(path).read())
        keys = sorted(m["tensors"])
        pick = {k: m["tensors"][k] for k in keys[:3] + [k for k in keys if "norm" in k][:2]}
        small = dict(m, tensors=pick, sections={"source": m["sections"].get("source", {})})
        out("checkpoint_manifest", "real-%d-small.json" % i, json.dumps(small, indent=2, sort_keys=True))
    out("checkpoint_manifest", "flat-and-box.json", manifest({
        "master/model.norm.weight": {"dtype": "f32", "shape": [32], "shards": [
            shard("rank_00000.h5", "/master/model.norm.weight", flat=[0, 20]),
            shard("rank_00001.h5", "/master/model.norm.weight", flat=[20, 32])]},
        "param/model.layers.0.moe.experts.down_projs": {"dtype": "bf16", "shape": [8, 8, 32], "shards": [
            shard("rank_00000.h5", "/param/model.layers.0.moe.experts.down_projs", offset=[0, 0, 0], count=[4, 8, 32]),
            shard("rank_00001.h5", "/param/model.layers.0.moe.experts.down_projs", offset=[4, 0, 0], count=[4, 8, 32])]},
        "exp_avg/x": {"dtype": "f32", "shape": [2, 3], "shards": [
            shard("rank_00000.h5", "/exp_avg/x", False, offset=[0, 0], count=[2, 1]),
            shard("rank_00000.h5", "/exp_avg/x#1", False, offset=[0, 1], count=[2, 2])]},
    }, sections={"mesh": {"world": 2, "ep": 1}, "schedule": {"step": 10, "lr": 1e-4}, "rng": {"seed": 1}},
       rank_sections={"data_cursor": [{"offset": 0}, {"offset": 10}]}))
    out("checkpoint_manifest", "scalars-empty-dtypes.json", manifest({
        "state/scalar": {"dtype": "i64", "shape": [], "shards": [shard("rank_00000.h5", "/state/scalar", offset=[], count=[])]},
        "state/flat_scalar": {"dtype": "i32", "shape": [], "shards": [shard("rank_00000.h5", "/state/flat_scalar", flat=[0, 1])]},
        "param/empty": {"dtype": "f16", "shape": [0, 4], "shards": []},
    }, world=1, rank_sections={"data_cursor": [None]}, step=0))
    out("checkpoint_manifest", "gap-overlap.json", manifest({
        "param/a": {"dtype": "f32", "shape": [10], "shards": [
            shard("rank_00000.h5", "/param/a", flat=[0, 6]), shard("rank_00001.h5", "/param/a", flat=[5, 10])]},
        "param/b": {"dtype": "f32", "shape": [4, 4], "shards": [
            shard("rank_00000.h5", "/param/b", offset=[0, 0], count=[2, 4])]},
    }))


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--manifest", action="append", default=[], help="manifest.json of a real checkpoint")
    a = ap.parse_args()
    safetensors_seeds()
    tokenizer_seeds()
    sft_seeds()
    generate_seeds()
    ini_seeds()
    manifest_seeds(a.manifest)
    return 0


if __name__ == "__main__":
    sys.exit(main())
