#!/usr/bin/env bash
# Throughput and peak memory of `dgemma convert` against the disk: a random bf16 model of about 1 GB
# (`dgemma init`; most of it experts, which conversion transposes), then, interleaved, REPS times:
#   cp+sync   cp -r of the model directory + sync: what the disk does with the same bytes (coreutils' cp
#             uses copy_file_range: the kernel copies the pages itself, no byte passes through user space)
#   dd+sync   dd of every file in 16 MiB blocks + sync: read(2)/write(2) of the same bytes, the ceiling for
#             any program that transforms them on the way (the kernel copies each page in and out)
#   h5-xN     convert --from hf --to h5 on N ranks (1 and 2)
#   hf-xN     convert --from h5 --to hf on N ranks (1 and 2), from a checkpoint made once up front
# for each dgemma binary given (e.g. a build of the previous commit, "before", beside the current one,
# "after"). Every run starts after a sync (the previous run's dirty pages are not charged to it), reads a
# model that sits in the page cache, and ends with its output on disk (convert fsyncs its files; cp is
# followed by sync). MB/s = the model's safetensors bytes / wall seconds (mpirun start-up included).
# Peak RSS per rank: GNU time's %M of each rank.
#
# Usage: scripts/bench_convert.sh DGEMMA [DGEMMA_BEFORE]
# Environment: REPS=3, LAYERS=8 (model size: ~120 MB per layer), WORK=<a temp dir under /tmp, removed at
#   the end unless KEEP=1>, MPIRUN="mpirun --oversubscribe --bind-to none".
set -euo pipefail

new=${1:?usage: bench_convert.sh DGEMMA [DGEMMA_BEFORE]}
old=${2:-}
[[ -x /usr/bin/time ]] || { echo "bench_convert: needs GNU time at /usr/bin/time" >&2; exit 2; }
REPS=${REPS:-3}
LAYERS=${LAYERS:-8}
MPIRUN=${MPIRUN:-"mpirun --oversubscribe --bind-to none"}
export OPENBLAS_NUM_THREADS=1 OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
export OMPI_MCA_rmaps_base_oversubscribe=1 OMPI_MCA_btl_vader_single_copy_mechanism=none
work=${WORK:-$(mktemp -d /tmp/dgemma-bench-convert.XXXXXX)}
mkdir -p "$work"
[[ "${KEEP:-0}" == 1 ]] || trap 'rm -rf "$work"' EXIT

# ---- the model: vocabulary 2048, H 1024, LAYERS layers of 16 experts (Fm 1024) ------------------------
types=""
for ((l = 1; l <= LAYERS; l++)); do
  if ((l % 6 == 0 || l == LAYERS)); then types+='"full_attention"'; else types+='"sliding_attention"'; fi
  if ((l < LAYERS)); then types+=', '; fi
done
cat >"$work/config.json" <<JSON
{
  "architectures": ["DiffusionGemmaForBlockDiffusion"], "model_type": "diffusion_gemma",
  "canvas_length": 16, "eos_token_id": [1, 106],
  "text_config": {
    "model_type": "diffusion_gemma_text", "vocab_size": 2048, "hidden_size": 1024,
    "intermediate_size": 2048, "num_hidden_layers": $LAYERS, "num_attention_heads": 8,
    "num_key_value_heads": 4, "head_dim": 128, "global_head_dim": 256, "num_global_key_value_heads": 2,
    "num_experts": 16, "top_k_experts": 2, "moe_intermediate_size": 1024, "sliding_window": 64,
    "rms_norm_eps": 1e-6, "final_logit_softcapping": 30.0, "use_bidirectional_attention": "vision",
    "layer_types": [$types],
    "rope_parameters": {
      "full_attention": {"partial_rotary_factor": 0.25, "rope_theta": 1000000.0, "rope_type": "proportional"},
      "sliding_attention": {"rope_theta": 10000.0, "rope_type": "default"}},
    "pad_token_id": 0, "bos_token_id": 2, "eos_token_id": 1
  }
}
JSON
"$new" init --model-config "$work/config.json" --dtype bf16 --out "$work/model" >"$work/init.log" 2>&1 ||
  { cat "$work/init.log" >&2; exit 1; }
bytes=$(cat "$work/model"/*.safetensors | wc -c)
$MPIRUN -n 1 "$new" convert --from hf --to h5 --in "$work/model" --out "$work/ck" >"$work/ck.log" 2>&1 ||
  { cat "$work/ck.log" >&2; exit 1; }

cat >"$work/rss_wrap.sh" <<'SH'
#!/usr/bin/env bash
rank=${OMPI_COMM_WORLD_RANK:-0}
exec /usr/bin/time -f '%M' -o "$RSS_PREFIX.$rank" "$@"
SH
chmod +x "$work/rss_wrap.sh"

# measure LABEL N CMD...: one timed run after a sync (N ranks; 0: a plain command followed by sync);
# appends "LABEL seconds rss-of-rank-0/rank-1-in-MiB job-seconds" to the results (job seconds: the time
# convert reports itself, from its start to its files on disk, without mpirun's and MPI_Init's start-up).
measure() {
  local label=$1 n=$2; shift 2
  rm -rf "$work/out" "$work/out.tmp" "$work/rss".*
  sync
  local t0 t1 ok=1
  t0=$(date +%s.%N)
  if [[ $n == 0 ]]; then
    { "$@" && sync; } >"$work/run.log" 2>&1 || ok=0
  else
    RSS_PREFIX="$work/rss" $MPIRUN -n "$n" -x RSS_PREFIX "$work/rss_wrap.sh" "$@" >"$work/run.log" 2>&1 || ok=0
  fi
  t1=$(date +%s.%N)
  ((ok)) || { echo "bench_convert: $label failed:" >&2; tail -20 "$work/run.log" >&2; exit 1; }
  local rss="" r
  for ((r = 0; r < n; r++)); do rss+="${rss:+/}$(awk '{printf "%.0f", $1/1024}' "$work/rss.$r")"; done
  local job
  job=$(sed -n 's/.*convert: .* MB in \([0-9.]*\) s (.*/\1/p' "$work/run.log" | tail -1)
  echo "$label $(awk -v a="$t0" -v b="$t1" 'BEGIN {printf "%.3f", b - a}') ${rss:--} ${job:--}" >>"$work/results"
}

echo "bench_convert: model $(awk -v b="$bytes" 'BEGIN {printf "%.0f", b / 1e6}') MB of safetensors; $REPS repetitions"
: >"$work/results"
for ((rep = 1; rep <= REPS; rep++)); do
  measure "cp+sync" 0 cp -r "$work/model" "$work/out"
  measure "dd+sync" 0 bash -c 'mkdir -p "$1" && for f in "$2"/*; do dd if="$f" of="$1/${f##*/}" bs=16M status=none || exit 1; done' \
    _ "$work/out" "$work/model"
  for bin in ${old:+"$old"} "$new"; do
    tag=$([[ "$bin" == "$new" ]] && echo after || echo before)
    for n in 1 2; do
      measure "h5-x$n-$tag" "$n" "$bin" convert --from hf --to h5 --in "$work/model" --out "$work/out"
      measure "hf-x$n-$tag" "$n" "$bin" convert --from h5 --to hf --in "$work/ck" --out "$work/out"
    done
  done
  echo "  repetition $rep done"
done
rm -rf "$work/out"

# One line per case: min and median wall seconds, MB/s at both, the median run's peak RSS per rank, and the
# median of the job's own seconds and its MB/s (start-up excluded; convert only).
printf '\n%-16s %7s %7s %8s %8s  %-22s %7s %8s\n' case "min s" "med s" "MB/s" "MB/s" "peak RSS MiB" "job s" "job MB/s"
printf '%-16s %7s %7s %8s %8s  %-22s %7s %8s\n' "" "" "" "(min s)" "(med s)" "(rank 0/1, median run)" "(med)" "(med)"
sort -k1,1 -k2,2n "$work/results" | awk -v b="$bytes" '
  { n[$1]++; t[$1, n[$1]] = $2; r[$1, n[$1]] = $3; j[$1, n[$1]] = $4 }
  END {
    for (k in n) {
      m = int((n[k] + 1) / 2)
      cnt = 0
      for (i = 1; i <= n[k]; i++) if (j[k, i] != "-") js[++cnt] = j[k, i] + 0
      for (a = 1; a <= cnt; a++) for (c = a + 1; c <= cnt; c++) if (js[c] < js[a]) { x = js[a]; js[a] = js[c]; js[c] = x }
      jm = cnt ? js[int((cnt + 1) / 2)] : 0
      printf "%-16s %7.2f %7.2f %8.1f %8.1f  %-22s %7s %8s\n", k, t[k, 1], t[k, m], b / 1e6 / t[k, 1], b / 1e6 / t[k, m],
             r[k, m], cnt ? sprintf("%.2f", jm) : "-", cnt ? sprintf("%.1f", b / 1e6 / jm) : "-"
    }
  }' | sort
[[ "${KEEP:-0}" == 1 ]] && echo "runs: $work/results"
exit 0
