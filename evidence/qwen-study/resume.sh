#!/usr/bin/env bash
# Resume the Qwen study on a fresh machine of this project (2 CPU cores, no GPU): install, put the
# response caches back, convert the built-in models once, then run parts of the study in the background,
# one CPU thread each, while the caches are saved every 10 minutes (a shutdown loses at most that).
#   bash evidence/qwen-study/resume.sh                       # the whole study as two Ray tasks at a time
#   bash evidence/qwen-study/resume.sh methods [METHOD...]   # the base model's BBQ method runs
#   bash evidence/qwen-study/resume.sh train NAME [NAME...]  # trainings and their evaluation
# Run the last two side by side to use both cores for different parts (split.py writes the parts).
# Logs: evidence/qwen-study/study.log (a line per finished run), /tmp/qwen-study-*.log (the drivers).
set -euo pipefail
cd "$(dirname "$0")/../.."
bash evidence/resume.sh evidence/qwen-study -     # install, restore the caches, save them every 10 minutes
. .venv/bin/activate
export FAIRDISTILL_DATA="${FAIRDISTILL_DATA:-$(cd .. && pwd)/shared/data}" OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
# one-time GGUF assembly / conversion of the built-in models, before two processes race to do it
for m in qwen2.5-coder-1.5b qwen2.5-coder-0.5b smollm2; do
  [ -d "/tmp/warm-$m" ] || fairdistill eval bbq --model "$m" --categories Age --limit 1 --mode generate \
    -o condition=ambig --out "/tmp/warm-$m" --no-progress > /dev/null
done
if [ $# -eq 0 ]; then
  bash evidence/resume.sh evidence/qwen-study examples/qwen_study.yaml --executor ray
else
  bash evidence/resume.sh evidence/qwen-study "$(python evidence/qwen-study/split.py "$@")"
fi
