"""Draw the confirmatory study's items, before any model answers them (issue: debiasing that carries over).

For each benchmark (BBQ and CBBQ) and category:

1. leave out every item a Qwen model answered in any committed study (every run folder under evidence/
   whose config names the benchmark and a Qwen model or student: the Qwen study, the multilingual study,
   the baselines, position and speed runs; its items are rebuilt from the run's own options), and say how
   many;
2. shuffle the category's templates (``template_key``: category and question index) with a fixed seed and
   hold out the first 30% of them, or more, in the same order, until every held-out cell has ``HELDOUT``
   fresh items; the rest are training templates;
3. draw, per context condition, a seeded sample of ``HELDOUT`` items from the held-out templates and of
   ``TRAIN[benchmark]`` items from the training templates.

Writes ``items/<benchmark>-<split>-<condition>.txt`` (one id per line) and ``draw.json`` (counts,
exclusions, seeds and each file's SHA-256). Deterministic: a rerun writes the same files.

    python evidence/confirmatory/draw_items.py
"""
from __future__ import annotations

import hashlib
import json
import math
import random
from collections import defaultdict
from pathlib import Path

HERE = Path(__file__).resolve().parent
EVIDENCE = HERE.parent
SEED = "confirmatory-2026-12-07"
HELDOUT = 30                          # items per category and condition in the held-out split
TRAIN = {"bbq": 30, "cbbq": 20}       # items per category and condition in the training split
HELDOUT_TEMPLATES = 0.3               # share of each category's templates held out
CONDITIONS = ("ambig", "disambig")


def evaluated_ids(benchmark: str) -> tuple[set[str], list[str]]:
    """Ids of every item a committed run of ``benchmark`` evaluated, and the run folders read."""
    from fairdistill.runner import build_benchmark

    ids: set[str] = set()
    folders = []
    for cfg_file in sorted(EVIDENCE.rglob("config.json")):
        if HERE in cfg_file.parents:
            continue
        cfg = json.loads(cfg_file.read_text())
        spec = cfg.get("run_spec") or {}
        if spec.get("benchmark") != benchmark:
            continue
        # items Qwen (the base model, a student of it, or Qwen 0.5B) answered in any committed study; runs of
        # SmolLM2 alone do not make an item stale for Qwen
        where = " ".join([str(cfg_file.relative_to(EVIDENCE)), str(spec.get("model")), str(cfg.get("model_spec"))])
        if "qwen" not in where.lower():
            continue
        opts = {k: v for k, v in (spec.get("options") or {}).items() if k != "data"}
        bench = build_benchmark(benchmark, opts, seed=spec.get("seed", 0), limit=spec.get("limit"))
        ids |= {it["id"] for it in bench.load_items()}
        folders.append(str(cfg_file.parent.relative_to(EVIDENCE.parent)))
    return ids, folders


def draw(benchmark: str) -> dict:
    from fairdistill.runner import build_benchmark

    bench = build_benchmark(benchmark, {})
    items = bench.load_items()
    used, folders = evaluated_ids(benchmark)
    by_cat: dict[str, list[dict]] = defaultdict(list)
    for it in items:
        by_cat[it["category"]].append(it)
    out: dict[str, list[str]] = {f"{s}-{c}": [] for s in ("train", "heldout") for c in CONDITIONS}
    per_category = {}
    for cat in sorted(by_cat):
        fresh = [it for it in by_cat[cat] if it["id"] not in used]
        templates = sorted({str(bench.template_key(it)) for it in fresh})
        random.Random(f"{SEED}-{benchmark}-{cat}-templates").shuffle(templates)
        conds = [c for c in CONDITIONS if any(it["context_condition"] == c for it in by_cat[cat])]  # CBBQ: some
        # categories ship ambiguous items only
        size = defaultdict(int)  # (template, condition) -> fresh items
        for it in fresh:
            size[(str(bench.template_key(it)), it["context_condition"])] += 1
        n_held, held_t = 0, set()
        # at least 30% of the templates, and as many more (in the shuffled order) as the held-out cells need
        while n_held < len(templates) and (n_held < math.ceil(len(templates) * HELDOUT_TEMPLATES) or any(
                sum(size[(t, c)] for t in held_t) < HELDOUT for c in conds)):
            held_t.add(templates[n_held])
            n_held += 1
        counts = {"items": len(by_cat[cat]), "excluded": len(by_cat[cat]) - len(fresh), "conditions": conds,
                  "templates": len(templates), "heldout_templates": n_held}
        for split, want, tset in (("heldout", HELDOUT, held_t), ("train", TRAIN[benchmark], set(templates) - held_t)):
            for cond in conds:
                pool = sorted((it["id"] for it in fresh
                               if it["context_condition"] == cond and str(bench.template_key(it)) in tset))
                if len(pool) < want:
                    raise SystemExit(f"{benchmark} {cat} {split} {cond}: only {len(pool)} items, {want} wanted")
                pick = sorted(random.Random(f"{SEED}-{benchmark}-{cat}-{split}-{cond}").sample(pool, want))
                out[f"{split}-{cond}"] += pick
                counts[f"{split}_{cond}_pool"] = len(pool)
        per_category[cat] = counts
    files = {}
    (HERE / "items").mkdir(exist_ok=True)
    for key, ids in out.items():
        p = HERE / "items" / f"{benchmark}-{key}.txt"
        p.write_text("\n".join(ids) + "\n")
        files[p.name] = {"n": len(ids), "sha256": hashlib.sha256(p.read_bytes()).hexdigest()}
    train = set(out["train-ambig"] + out["train-disambig"])
    held = set(out["heldout-ambig"] + out["heldout-disambig"])
    assert not train & held and not (train | held) & used
    tmpl = {str(bench.template_key(it)) for it in items if it["id"] in held}
    assert not tmpl & {str(bench.template_key(it)) for it in items if it["id"] in train}
    return {"benchmark": benchmark, "seed": SEED, "heldout_per_cell": HELDOUT, "train_per_cell": TRAIN[benchmark],
            "heldout_template_share": HELDOUT_TEMPLATES, "excluded_items": len(used),
            "excluded_from_runs": folders, "categories": per_category, "files": files}


def main() -> None:
    result = {b: draw(b) for b in ("bbq", "cbbq")}
    (HERE / "draw.json").write_text(json.dumps(result, indent=2) + "\n")
    for b, r in result.items():
        print(f"{b}: excluded {r['excluded_items']} items evaluated in {len(r['excluded_from_runs'])} committed runs; "
              + ", ".join(f"{k} {v['n']}" for k, v in r["files"].items()))


if __name__ == "__main__":
    main()
