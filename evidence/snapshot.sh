#!/usr/bin/env bash
# Persist / restore a long study's response caches across machines (runs take longer than one session).
#   bash evidence/snapshot.sh save FOLDER     # consistent copies beside each live cache (run any time)
#   bash evidence/snapshot.sh restore FOLDER  # before resuming on a fresh machine
# A live cache (responses.sqlite) changes while a run writes it; the copy (responses.snapshot.sqlite)
# is what is committed. Restore never overwrites a live cache.
set -euo pipefail
cd "$2"
python3 - "$1" <<'PY'
import sqlite3, sys, pathlib, shutil
mode = sys.argv[1]
for snap in (pathlib.Path(".").rglob("responses.snapshot.sqlite") if mode == "restore" else []):
    live = snap.with_name("responses.sqlite")
    if not live.exists():
        shutil.copy(snap, live); print("restored", live)
for live in (pathlib.Path(".").rglob("responses.sqlite") if mode == "save" else []):
    src, dst = sqlite3.connect(live, timeout=60), sqlite3.connect(live.with_name("responses.snapshot.sqlite"))
    src.backup(dst); n = dst.execute("select count(*) from responses").fetchone()[0]
    dst.close(); src.close(); print("saved", live, n, "entries")
PY
