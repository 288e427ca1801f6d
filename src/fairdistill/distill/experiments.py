"""Reproducible distillation measurements (the numbers in the closing notes).

    python -m fairdistill.distill.experiments fairdistill --model smollm2 --student lora --steps 150 --lr 3e-3 \
        --alpha-rule 5 --out runs/fd
    python -m fairdistill.distill.experiments self-distill --model smollm2 --method reprompting --limit 480 \
        --condition ambig --heldout 0.5 --out runs/sd

``fairdistill``: an occupation corpus (WinoBias occupation lists, neutral continuations, no
pronouns) is generated for *training* occupations; held-out occupations (and "engineer") are only
probed. The he/she log-ratio log P(" he") - log P(" she") after "The {occupation} said that" (and two
more frames) is measured for the teacher, for a student distilled with the he/she rule and for one
distilled identically without rules.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from ..benchmarks.occupation_pronouns import FRAMES as PROBE_FRAMES, HELD_F, HELD_M
from .corpora import occupation_corpus


def probe_ratios(model, tok, occs: list[str]) -> dict[str, float]:
    from .fairdistill import token_log_ratios

    out = {}
    for o in occs:
        vals = token_log_ratios(model, tok, [fr.format(o=o) for fr in PROBE_FRAMES], "he", "she")
        out[o] = round(sum(vals) / len(vals), 4)
    return out


def _group_stats(r: dict[str, float]) -> dict[str, Any]:
    from .fairdistill import ratio_summary

    f = [r[o] for o in HELD_F]
    m = [r[o] for o in HELD_M]
    s = ratio_summary(f + m)
    s.update(female_coded_mean=round(sum(f) / len(f), 4), male_coded_mean=round(sum(m) / len(m), 4),
             gap_m_minus_f=round(sum(m) / len(m) - sum(f) / len(f), 4))
    return s


def measure_fairdistill(model: str, student: str, steps: int, out: str, only: str | None = None,
                        wide: bool = False, **cfg: Any) -> dict[str, Any]:
    from .fairdistill import load_teacher, prepare_fairdistill, ratio_summary, token_log_ratios, train_job

    texts, train_occ, held = occupation_corpus(wide)
    t_model, tok = load_teacher(model, device=cfg.get("device", "cpu"))
    res: dict[str, Any] = {"model": model, "student": student, "steps": steps, "corpus_sentences": len(texts),
                           "train_occupations": train_occ, "heldout_occupations": held, "probe_frames": PROBE_FRAMES}
    t0 = time.perf_counter()
    res["teacher"] = {"ratios": probe_ratios(t_model, tok, held)}
    res["teacher"]["summary"] = _group_stats(res["teacher"]["ratios"])
    res["teacher"]["train_occupations"] = ratio_summary(list(probe_ratios(t_model, tok, train_occ).values()))
    res["teacher"]["said_that"] = dict(zip(["nurse", "engineer"], [round(v, 4) for v in token_log_ratios(
        t_model, tok, ["The nurse said that", "The engineer said that"], "he", "she")]))
    for name, rules in (("with_rule", "he_she"), ("without_rule", None)):
        if only and name != only:
            continue
        job = prepare_fairdistill((t_model, tok), student, rules, texts, Path(out) / name, max_steps=steps,
                                  resume=False, save_steps=10_000, **cfg)
        s = train_job(job)
        r = probe_ratios(job.student, tok, held)
        tr = probe_ratios(job.student, tok, train_occ)
        res[name] = {"ratios": r, "summary": _group_stats(r), "train_seconds": s["train_seconds"],
                     "last_log": s["last_log"], "train_occupations": ratio_summary(list(tr.values()))}
        print(name, json.dumps(res[name]["summary"]), flush=True)
    res["total_seconds"] = round(time.perf_counter() - t0, 1)
    Path(out).mkdir(parents=True, exist_ok=True)
    (Path(out) / f"fairdistill_measurement{'_' + only if only else ''}.json").write_text(json.dumps(res, indent=2))
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    a = sub.add_parser("fairdistill")
    a.add_argument("--model", default="smollm2")
    a.add_argument("--student", default="lora")
    a.add_argument("--steps", type=int, default=120)
    a.add_argument("--lr", type=float, default=1e-3)
    a.add_argument("--batch", type=int, default=8)
    a.add_argument("--lora-r", type=int, default=16)
    a.add_argument("--rule-mode", default="logit")
    a.add_argument("--alpha-rule", type=float, default=0.0, help="weight of the rule-balance term (0: as published)")
    a.add_argument("--only", default=None, choices=["with_rule", "without_rule"], help="run one of the two students")
    a.add_argument("--out", default="runs/fairdistill")
    a.add_argument("--wide-corpus", action="store_true", help="also train on the occupation probe's 40 occupations")
    b = sub.add_parser("self-distill")
    b.add_argument("--model", default="smollm2")
    b.add_argument("--method", default="reprompting")
    b.add_argument("--prompts", default="bbq")
    b.add_argument("--limit", type=int, default=50, help="items per category and condition")
    b.add_argument("--epochs", type=float, default=3)
    b.add_argument("--lr", type=float, default=2e-4)
    b.add_argument("--categories", default=None)
    b.add_argument("--condition", default="both")
    b.add_argument("--heldout", type=float, default=0.3, help="fraction of items held out for evaluation")
    b.add_argument("--out", default="runs/self_distill")
    args = ap.parse_args()
    if args.cmd == "fairdistill":
        res = measure_fairdistill(args.model, args.student, args.steps, args.out, only=args.only, wide=args.wide_corpus,
                                  learning_rate=args.lr,
                                  batch_size=args.batch, lora_r=args.lora_r, lora_alpha=2 * args.lora_r,
                                  rule_mode=args.rule_mode, alpha_rule=args.alpha_rule, device="cpu", max_length=32,
                                  logging_steps=10)
        print(json.dumps({k: res[k]["summary"] for k in ("teacher", "with_rule", "without_rule") if k in res}, indent=2))
    else:
        from .self_distill import run_self_distill

        res = run_self_distill(args.model, args.method, args.prompts, args.out, limit=args.limit, epochs=args.epochs,
                               learning_rate=args.lr, categories=args.categories, condition=args.condition,
                               heldout=args.heldout, device="cpu")
        print(json.dumps({k: res.get(k) for k in ("heldout", "train", "train_seconds")}, indent=2, default=str))


if __name__ == "__main__":
    main()
