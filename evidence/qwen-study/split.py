"""Write parts of examples/qwen_study.yaml that two processes can run side by side on 2 cores.

    python evidence/qwen-study/split.py methods            # the base model's BBQ runs and the methods
    python evidence/qwen-study/split.py train NAME [NAME]  # only the named trainings, in that order, each
                                                           # followed by its evaluation
    python evidence/qwen-study/split.py without NAME [NAME]  # the whole study but the named trainings or
                                                             # methods (a report while one still runs)

Each part writes into the same study folder (evidence/qwen-study): run folders, caches and trainings
are the study's own, so the final `fairdistill run examples/qwen_study.yaml --out evidence/qwen-study`
finds them finished and only writes the comparisons and the report. The part files go to
evidence/qwen-study/parts/ (not kept: this script makes them again).
"""
import sys
from pathlib import Path

import yaml

root = Path(__file__).resolve().parents[2]
cfg = yaml.safe_load((root / "examples" / "qwen_study.yaml").read_text())
part, names = sys.argv[1], sys.argv[2:]
if part == "methods":
    cfg["training"] = []
    cfg.pop("capability", None)  # lm-eval does not go through the response cache: left to the full run
    cfg["benchmarks"] = [b for b in cfg["benchmarks"] if b["name"] == "bbq"]
    if names:
        cfg["methods"] = [m for m in cfg["methods"] if m.get("id", m["name"]) in names]
elif part == "train":
    # the methods stay on the ambiguous BBQ items only: a self-distillation teacher (method: auto) is chosen
    # from their comparisons, which the part reopens (finished runs: nothing is asked) but never extends,
    # so it does not touch a method run that the methods part may be computing on disambiguated items
    ambig = {b.get("id", b["name"]) for b in cfg["benchmarks"]
             if b["name"] == "bbq" and (b.get("options") or {}).get("condition") == "ambig"}
    kept = []
    for m in cfg["methods"]:
        on = [b for b in m.get("benchmarks") or [] if b in ambig]
        if on:
            kept.append({**m, "benchmarks": on})
    cfg["methods"] = kept
    # a trained model's quick, training-specific probes and capability first, BBQ last (a session may
    # end during its BBQ runs); the capability block as an entry keeps its run folder and identity
    cap = cfg.pop("capability", None)
    cfg["benchmarks"].sort(key=lambda b: b["name"] == "bbq")
    if cap is not None:
        at = next(i for i, b in enumerate(cfg["benchmarks"]) if b["name"] == "bbq")
        cfg["benchmarks"].insert(at, {"name": "capability", "options": cap})
    cfg["training"] = sorted((t for t in cfg["training"] if t["name"] in names), key=lambda t: names.index(t["name"]))
    missing = set(names) - {t["name"] for t in cfg["training"]}
    if missing:
        sys.exit(f"no training named {', '.join(sorted(missing))}")
elif part == "without" and names:
    found = {t["name"] for t in cfg["training"]} | {m.get("id", m["name"]) for m in cfg["methods"]}
    if set(names) - found:
        sys.exit(f"no training or method named {', '.join(sorted(set(names) - found))}")
    cfg["training"] = [t for t in cfg["training"] if t["name"] not in names]
    cfg["methods"] = [m for m in cfg["methods"] if m.get("id", m["name"]) not in names]
else:
    sys.exit("usage: split.py methods [METHOD...] | train NAME [NAME...] | without NAME [NAME...]")
out = Path(__file__).resolve().parent / "parts"
out.mkdir(exist_ok=True)
dest = out / f"{part}{'-' + '-'.join(names) if names else ''}.yaml"
# ${data} and ${config_dir} are expanded when the part is loaded; the part lives beside no corpus of its own
dest.write_text(yaml.safe_dump(cfg, sort_keys=False, allow_unicode=True))
print(dest)
