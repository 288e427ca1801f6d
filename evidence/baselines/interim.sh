#!/usr/bin/env bash
# The interim table of a model whose half of the study is still running (README "Mitigation baselines"):
# a report of its finished run folders (those with metrics.json), plain runs first, then each mitigation
# (for Qwen: the bf16 runs and self-debias of qwen15/, then the float32 line of qwen15-fp32/).
#   bash evidence/baselines/interim.sh qwen15 [OUT.html]      # -> OUT.html and OUT.md (the table)
set -euo pipefail
model=${1:?model name, e.g. qwen15}
out=${2:-/tmp/baselines-$model-interim.html}
cd "$(dirname "$0")"
args=()
for line in "$model" "$model-fp32"; do  # Qwen: its bf16 runs and self-debias, then its float32 line
  for suffix in "" --self-debias --sentence-debias --inlp; do
    for bench in crows-pairs stereoset holistic-gender bbq-ambig capability; do
      d=$line/$bench$suffix
      [ -f "$d/metrics.json" ] || continue
      args+=("$d" --label "$line${suffix:+ + ${suffix#--}}")
    done
  done
done
for trained in cda fairdistill self-distilled; do
  for bench in crows-pairs stereoset holistic-gender bbq-ambig capability; do
    d=$model-$trained/$bench
    [ -f "$d/metrics.json" ] || continue
    args+=("$d" --label "$model-$trained")
  done
done
exec fairdistill report "${args[@]}" --out "$out" --title "Mitigation baselines, $model (interim: finished runs)"
