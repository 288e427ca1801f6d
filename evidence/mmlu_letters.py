"""Which letter a model chose on each MMLU question of a capability run, read from the run's response
cache without loading the model (for runs whose results.jsonl is gone; newer runs carry the same table
under ``position`` in metrics.json).

lm-eval's requests for the run's questions are rebuilt from its recorded options (local task
definitions, same subjects and limit), keyed as the cache keys them (the model identity in the run's
config.json), and the cached log-likelihoods of " A" .. " D" decide the answer as lm-eval's acc does
(the first maximum).

    python evidence/mmlu_letters.py evidence/qwen-study/qwen15*/capability evidence/baselines/qwen15*/capability

A run's cache is its model folder's responses.sqlite, or the committed responses.snapshot.sqlite.
"""
from __future__ import annotations

import json
import sqlite3
import sys
from collections import Counter, defaultdict
from pathlib import Path

from fairdistill.backends.cache import _key
from fairdistill.benchmarks.capability import Capability

LETTERS = "ABCD"


def cache_of(run: Path) -> Path | None:
    for name in ("responses.sqlite", "responses.snapshot.sqlite"):
        if (run.parent / name).exists():
            return run.parent / name
    return None


def letters(run: Path) -> tuple[Counter, Counter, int]:
    """(answers by letter, gold answers by letter, questions missing from the cache)."""
    from lm_eval.tasks import TaskManager, get_task_dict

    ident = json.loads((run / "config.json").read_text())["identity"]
    if ident.get("tasks") != ["mmlu"] or ident.get("num_fewshot") or ident.get("apply_chat_template"):
        raise SystemExit(f"{run}: only zero-shot MMLU runs without a chat template are rebuilt here")
    db = cache_of(run)
    if db is None:
        raise SystemExit(f"{run}: no response cache beside it")
    bench = Capability(tasks=["mmlu"], subjects=ident.get("subjects"), limit=ident.get("limit"),
                       seed=ident.get("seed", 0))
    tasks = get_task_dict(["fd_mmlu"], TaskManager(include_path=str(bench.task_dir()), include_defaults=False))
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    chosen, gold, missing = Counter(), Counter(), 0

    def leaves(d):
        for v in d.values():
            yield from (leaves(v) if isinstance(v, dict) else [v])

    for task in leaves(tasks):
        task.build_all_requests(limit=ident.get("limit"), rank=0, world_size=1)
        by_doc = defaultdict(list)
        for inst in task.instances:
            by_doc[inst.doc_id].append(inst)
        for insts in by_doc.values():
            insts.sort(key=lambda i: i.idx)
            lls = []
            for inst in insts:
                key = _key(ident["model"], "lm_eval.loglikelihood", [str(a) for a in inst.args])
                row = con.execute("SELECT value FROM responses WHERE key = ?", (key,)).fetchone()
                lls.append(None if row is None else json.loads(row[0])[0])
            if None in lls:
                missing += 1
                continue
            chosen[LETTERS[lls.index(max(lls))]] += 1
            gold[LETTERS[task.doc_to_target(insts[0].doc)]] += 1
    return chosen, gold, missing


def main(runs: list[str]) -> None:
    print("| run | answers A / B / C / D | gold A / B / C / D | right | not in cache |")
    print("|---|---|---|---|---|")
    for r in runs:
        run = Path(r)
        chosen, gold, missing = letters(run)
        acc = json.loads((run / "metrics.json").read_text())["summary"].get("mmlu/acc")
        print(f"| {run.parent.parent.name}/{run.parent.name} | {' / '.join(str(chosen[x]) for x in LETTERS)} | "
              f"{' / '.join(str(gold[x]) for x in LETTERS)} | {acc} | {missing} |")


if __name__ == "__main__":
    main(sys.argv[1:])
