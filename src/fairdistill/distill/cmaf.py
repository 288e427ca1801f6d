"""CMAF (cross-model adjudication, fine-tuning stage): adjudicated responses -> SFT and preference sets.

:func:`build_cmaf_sets` turns adjudicated responses into an SFT set (accepted responses) and
preference pairs (accepted vs rejected for the same prompt; TRL's ``prompt/chosen/rejected``
conversational format); :func:`run_cmaf_finetune` trains a LoRA adapter on the SFT set.
"""
from __future__ import annotations

import json
import os
from dataclasses import asdict, fields
from pathlib import Path
from typing import Any, Iterable, Sequence

from ..errors import UserError, reject_unknown_options
from .sft import SFTConfig, train_lora_sft, write_jsonl as _write_jsonl


def _verdict(rec: dict) -> bool:
    if "accepted" in rec:
        return bool(rec["accepted"])
    v = str(rec.get("verdict", "")).lower()
    if v in ("accept", "accepted", "pass", "ok"):
        return True
    if v in ("reject", "rejected", "fail"):
        return False
    raise UserError(f"adjudication record {rec.get('id', '?')} has no 'accepted' flag or accept/reject 'verdict'")


def _prompt_messages(rec: dict) -> list[dict]:
    if isinstance(rec.get("messages"), list):
        return rec["messages"]
    if isinstance(rec.get("prompt"), str):
        return [{"role": "user", "content": rec["prompt"]}]
    raise UserError(f"adjudication record {rec.get('id', '?')} has no 'prompt' or 'messages'")


def build_cmaf_sets(records: Iterable[dict], out: str | Path | None = None, *, max_pairs_per_prompt: int = 4,
                    models: Sequence[str] | None = None) -> dict[str, Any]:
    """CMAF data: accepted responses -> SFT set; accepted vs rejected for one prompt -> preference pairs.

    ``records``: one per adjudicated response: ``prompt`` (str) or ``messages`` (chat list),
    ``response`` (str), ``accepted`` (bool) or ``verdict`` (accept/reject), optionally ``model``
    (who answered), ``score`` (the panel's aggregate; higher = less biased, orders the pairs),
    ``judges`` (the panel's votes, kept as metadata), ``id``. ``models``: keep only responses of these
    answering models (each CMAF model is fine-tuned on the accepted set; by default all).

    Writes ``sft.jsonl`` (``{"messages", "completion", "model", "id"}``) and ``preferences.jsonl``
    (``{"prompt": [messages], "chosen": [assistant msg], "rejected": [assistant msg]}``, TRL's
    conversational preference format) under ``out`` if given. Returns the two lists and counts.
    """
    by_prompt: dict[str, dict[str, Any]] = {}
    n = 0
    for rec in records:
        if models and rec.get("model") not in models:
            continue
        if not isinstance(rec.get("response"), str):
            raise UserError(f"adjudication record {rec.get('id', '?')} has no string 'response'")
        msgs = _prompt_messages(rec)
        key = json.dumps(msgs, sort_keys=True)
        slot = by_prompt.setdefault(key, {"messages": msgs, "accepted": [], "rejected": []})
        slot["accepted" if _verdict(rec) else "rejected"].append(rec)
        n += 1
    if not n:
        raise UserError("no adjudication records (after the model filter)")
    sft, prefs = [], []
    score = lambda r: float(r.get("score", 0.0) or 0.0)  # noqa: E731
    for slot in by_prompt.values():
        acc = sorted(slot["accepted"], key=score, reverse=True)
        rej = sorted(slot["rejected"], key=score)
        for r in acc:
            sft.append({"id": r.get("id"), "messages": slot["messages"], "completion": r["response"],
                        "model": r.get("model"), "score": r.get("score")})
        pairs = [(a, b) for a in acc for b in rej][:max_pairs_per_prompt]
        for a, b in pairs:
            prefs.append({"prompt": slot["messages"], "chosen": [{"role": "assistant", "content": a["response"]}],
                          "rejected": [{"role": "assistant", "content": b["response"]}],
                          "chosen_model": a.get("model"), "rejected_model": b.get("model")})
    result = {"sft": sft, "preferences": prefs, "n_records": n, "n_prompts": len(by_prompt),
              "n_accepted": len(sft), "n_rejected": n - len(sft), "n_pairs": len(prefs)}
    if out is not None:
        o = Path(out)
        _write_jsonl(o / "sft.jsonl", sft)
        _write_jsonl(o / "preferences.jsonl", prefs)
    return result


def run_cmaf_finetune(model: str, adjudicated: str | Sequence[dict], out: str, **config: Any) -> dict[str, Any]:
    """CMAF fine-tuning: build the SFT / preference sets from adjudication records (a jsonl file or a
    list, format in :func:`build_cmaf_sets`) and train a LoRA adapter on the accepted responses.
    ``config``: SelfDistillConfig fields (training ones), plus ``models`` (answering models to keep)
    and ``max_pairs_per_prompt``. Writes ``sft.jsonl``, ``preferences.jsonl``, ``adapter/``, ``cmaf.json``."""
    from ..backends.hf import HFBackend
    from ..data import read_jsonl

    models = config.pop("models", None)
    max_pairs = config.pop("max_pairs_per_prompt", 4)
    reject_unknown_options(config, (f.name for f in fields(SFTConfig)), "CMAF fine-tuning")
    cfg = SFTConfig(**config)
    recs = list(read_jsonl(adjudicated)) if isinstance(adjudicated, (str, os.PathLike)) else list(adjudicated)
    sets = build_cmaf_sets(recs, out, max_pairs_per_prompt=max_pairs, models=models)
    from .fairdistill import _resolve_device

    backend = HFBackend.from_spec(str(model), device=_resolve_device(cfg.device), dtype="float32")
    backend.require(chat=True, what="CMAF fine-tuning")
    _, info = train_lora_sft(backend.model, backend.tokenizer, sets["sft"], Path(out), cfg)
    summary = {k: v for k, v in sets.items() if k not in ("sft", "preferences")}
    summary.update(info, model=str(model), config=asdict(cfg))
    from ..distributed import dist_env

    if dist_env().is_main:
        (Path(out) / "cmaf.json").write_text(json.dumps(summary, indent=2, default=str))
    return summary


__all__ = ["build_cmaf_sets", "run_cmaf_finetune"]
