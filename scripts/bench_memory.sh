#!/usr/bin/env bash
# Peak resident memory per rank of `dgemma sft` on a random model of ~370 M parameters, for 1, 2 and 4
# ranks, beside what the FSDP memory formula predicts (docs/parallelism.md "Memory per rank"):
#
#   at rest      16 B x (parameters / ranks)      fp32 master + 2 Adam moments + gradient shard
#   working set  4 B x (2 x root + 3 x layer)     compute copies and gradient buffers in flight (fp32 on
#                                                 the CPU backend): the root unit gathered and its gradient
#                                                 buffer, held for the whole micro-batch; in the backward
#                                                 the layer being computed and the prefetched one below it
#                                                 gathered, and the layer's gradient buffer (layer = the
#                                                 largest layer's dense unit + its experts unit)
#
#   input pages  2 B x (parameters / ranks)       the input model's bf16 safetensors are memory-mapped:
#                                                 the pages a rank reads for its slices stay in its RSS
#                                                 (file-backed, reclaimable) while sft holds the reader
#
# Each run is 2 optimizer steps of micro-batch 1 with short sequences (the activations are negligible),
# so the measured peak is the model state + working set + input pages + the process baseline (binary,
# MPI, OpenBLAS, the tokenizer and data; measured below on the tiny preset). The model is
# wide where it costs memory and small where it costs compute: vocabulary 2048, H 1024, 6 layers of 16
# experts (Fm 1024, top-2) - 82 % of the parameters are experts.
#
# Usage: scripts/bench_memory.sh [DGEMMA_BINARY]     (default: build-cpu/app/dgemma, else build/app/dgemma)
# Environment: RANKS="1 2 4" (rank counts), EPS="1" (expert-parallel sizes to run for each rank count
#   that they divide, e.g. EPS="1 2 4"),
#   STEPS=2, SEQ_LEN=32, WORK=<a temporary directory> (model, runs; removed at the end unless KEEP=1),
#   MPIRUN="mpirun --oversubscribe --bind-to none".
# Needs GNU time (/usr/bin/time) and awk. Prints a table; exit status non-zero when a run fails.
set -euo pipefail

here=$(cd "$(dirname "$0")/.." && pwd)
dgemma=${1:-}
if [[ -z "$dgemma" ]]; then
  for c in "$here/build-cpu/app/dgemma" "$here/build/app/dgemma"; do [[ -x "$c" ]] && { dgemma=$c; break; }; done
fi
[[ -n "$dgemma" && -x "$dgemma" ]] || { echo "bench_memory: no dgemma binary (pass its path)" >&2; exit 2; }
[[ -x /usr/bin/time ]] || { echo "bench_memory: needs GNU time at /usr/bin/time" >&2; exit 2; }
RANKS=${RANKS:-"1 2 4"}
EPS=${EPS:-1}
STEPS=${STEPS:-2}
SEQ_LEN=${SEQ_LEN:-32}
MPIRUN=${MPIRUN:-"mpirun --oversubscribe --bind-to none"}
export OPENBLAS_NUM_THREADS=${OPENBLAS_NUM_THREADS:-1}
work=${WORK:-$(mktemp -d /tmp/dgemma-bench-memory.XXXXXX)}
mkdir -p "$work"
[[ "${KEEP:-0}" == 1 || -n "${WORK:-}" ]] || trap 'rm -rf "$work"' EXIT

# ---- the model: shape variables, used for the config and for the formula ------------------------------
V=2048 H=1024 F=2048 LAYERS=6 HEADS=8 KV=4 HD=128 GHD=256 GKV=2 E=16 TOPK=2 FM=1024 WINDOW=64 CANVAS=16
cat >"$work/config.json" <<EOF
{
  "architectures": ["DiffusionGemmaForBlockDiffusion"], "model_type": "diffusion_gemma",
  "canvas_length": $CANVAS, "eos_token_id": [1, 106],
  "text_config": {
    "model_type": "diffusion_gemma_text", "vocab_size": $V, "hidden_size": $H,
    "intermediate_size": $F, "num_hidden_layers": $LAYERS, "num_attention_heads": $HEADS,
    "num_key_value_heads": $KV, "head_dim": $HD, "global_head_dim": $GHD, "num_global_key_value_heads": $GKV,
    "num_experts": $E, "top_k_experts": $TOPK, "moe_intermediate_size": $FM, "sliding_window": $WINDOW,
    "rms_norm_eps": 1e-6, "final_logit_softcapping": 30.0, "use_bidirectional_attention": "vision",
    "layer_types": ["sliding_attention", "sliding_attention", "sliding_attention",
                    "sliding_attention", "sliding_attention", "full_attention"],
    "rope_parameters": {
      "full_attention": {"partial_rotary_factor": 0.25, "rope_theta": 1000000.0, "rope_type": "proportional"},
      "sliding_attention": {"rope_theta": 10000.0, "rope_type": "default"}},
    "pad_token_id": 0, "bos_token_id": 2, "eos_token_id": 1
  }
}
EOF

# Parameter counts (as layers/model.cpp lays them out; full-attention layers take V from K).
read -r P_ROOT P_SLIDING P_FULL P_EXPERTS P_TOTAL < <(awk -v V=$V -v H=$H -v F=$F -v L=$LAYERS -v nh=$HEADS \
    -v kv=$KV -v hd=$HD -v ghd=$GHD -v gkv=$GKV -v E=$E -v Fm=$FM 'BEGIN {
  root = V*H + 2*H + 3*F*H
  common = 7*H + 3*F*H + E*H + H + E + 2          # 7 norms, dense MLP, router (proj, scale, per-expert), 2 scalars
  sliding = 2*nh*hd*H + 2*kv*hd*H + 2*hd + common   # q, o, k, v, q/k norms
  full = 2*nh*ghd*H + gkv*ghd*H + 2*ghd + common    # q, o, k (no v)
  experts = E*H*3*Fm
  total = root + (L-1)*sliding + full + L*experts   # 5 sliding + 1 full
  printf "%d %d %d %d %d\n", root, sliding, full, experts, total }')

log() { printf '%s\n' "$*"; }
log "bench_memory: $dgemma, work dir $work"
log "model: V $V, H $H, $LAYERS layers (5 sliding, 1 full), $E experts top-$TOPK (Fm $FM): $P_TOTAL parameters" \
    "(root $P_ROOT, dense layer $P_SLIDING / $P_FULL, experts per layer $P_EXPERTS)"

"$dgemma" init --preset tiny --out "$work/tok" --overwrite >"$work/init-tok.log" 2>&1   # the built-in tokenizer files
"$dgemma" init --model-config "$work/config.json" --tokenizer "$work/tok" --out "$work/model" --overwrite \
  >"$work/init.log" 2>&1 || { cat "$work/init.log" >&2; exit 1; }
grep -o '[0-9.]* B parameters' "$work/init.log" | sed 's/^/init: /'

# One rank's peak RSS: GNU time's %M (KiB) into a file named by the MPI rank.
cat >"$work/rss_wrap.sh" <<'EOF'
#!/usr/bin/env bash
rank=${OMPI_COMM_WORLD_RANK:-${PMI_RANK:-${SLURM_PROCID:-0}}}
exec /usr/bin/time -f '%M' -o "$RSS_PREFIX.$rank" "$@"
EOF
chmod +x "$work/rss_wrap.sh"

# run NAME N [sft options...]: N ranks; prints the per-rank peak RSS in MiB (rank order) on stdout.
run() {
  local name=$1 n=$2; shift 2
  rm -rf "$work/$name" "$work/rss.$name".*
  if ! RSS_PREFIX="$work/rss.$name" $MPIRUN -n "$n" -x RSS_PREFIX -x OPENBLAS_NUM_THREADS "$work/rss_wrap.sh" \
      "$dgemma" sft --steps "$STEPS" --warmup 0 --micro-batch 1 --seq-len "$SEQ_LEN" --checkpoint-every 0 \
      --export false --out "$work/$name" "$@" >"$work/$name.log" 2>&1; then
    echo "bench_memory: run $name failed:" >&2; tail -20 "$work/$name.log" >&2; return 1
  fi
  local r out=""
  for ((r = 0; r < n; r++)); do out+="$(awk '{printf "%.0f", $1/1024}' "$work/rss.$name.$r") "; done
  rm -rf "$work/$name/checkpoints"  # GBs of masters and moments: not needed
  echo "$out"
}

base=$(run baseline 1 --preset tiny)
log "process baseline (tiny preset, 1 rank, same options): ${base% } MiB"

printf '\n%-5s %-3s %-24s %7s %8s %8s %8s %8s %8s %8s\n' ranks ep "peak RSS per rank" max "at rest" working input baseline formula "measured"
printf '%-5s %-3s %-24s %7s %8s %8s %8s %8s %8s %8s\n' "" "" "MiB, rank order" MiB MiB "set MiB" "pages" MiB MiB "/formula"
for n in $RANKS; do
  for ep in $EPS; do
    (( n % ep == 0 && E % ep == 0 )) || continue
    rss=$(run "n${n}_ep$ep" "$n" --model "$work/model" --ep "$ep")
    awk -v n=$n -v ep=$ep -v rss="$rss" -v base="${base% }" -v root=$P_ROOT -v s=$P_SLIDING -v f=$P_FULL \
        -v ex=$P_EXPERTS -v total=$P_TOTAL 'BEGIN {
      mib = 1024*1024
      split(rss, a, " "); max = 0; for (i in a) if (a[i] + 0 > max) max = a[i] + 0
      rest = 16 * total / n / mib
      layer = (s > f ? s : f) + ex / ep                 # largest layer: dense unit + the rank'"'"'s experts
      work = 4 * (2*root + 3*layer) / mib
      input = 2 * total / n / mib
      pred = rest + work + input + base
      printf "%-5d %-3d %-24s %7d %8.0f %8.0f %8.0f %8.0f %8.0f %8.2f\n", n, ep, rss, max, rest, work, input, base, pred, max / pred }'
  done
done
log ""
log "at rest = 16 B x $P_TOTAL / ranks; working set = 4 B x (2 x root + 3 x largest layer, its experts / ep);"
log "input pages = 2 B x $P_TOTAL / ranks; formula = at rest + working set + input pages + baseline."
[[ "${KEEP:-0}" == 1 || -n "${WORK:-}" ]] && log "Logs: $work/*.log"
exit 0
