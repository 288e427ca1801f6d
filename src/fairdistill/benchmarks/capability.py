"""Capability retention: lm-evaluation-harness on the same in-process model object.

A debiased model is only useful if it still works. This benchmark runs lm-evaluation-harness's
Python API (``lm_eval.simple_evaluate``) on ``HFLM(pretrained=<the loaded model object>)``, so the
numbers come from lm-eval itself (no re-implementation) and describe exactly the weights the bias
benchmarks saw.

Tasks (option ``tasks``, a list or comma-separated string):

- ``mmlu`` (all subjects, or ``subjects=[...]``), ``mmlu_<subject>``, ``gpqa_diamond``, ``ifeval``:
  served by local task definitions over ``shared/data`` (see
  :mod:`fairdistill.benchmarks.lm_eval_tasks`); no hub access. Set ``local=false`` to use
  lm-eval's own (hub-backed) tasks instead.
- any other lm-eval task name, passed through unchanged (its data must be reachable or cached).

Each requested task is one item of the run (lm-eval evaluates a task as a whole), so an
interrupted run resumes at the next task. The stored record holds lm-eval's own results for that
task (``results``/``groups``/``n-samples``/``higher_is_better``...) and its per-sample log;
``metrics.json`` has tidy rows (task, metric, value, stderr, 95% normal CI, n) plus the merged raw
lm-eval results dict under ``lm_eval``. Under ``position``: the share of multiple-choice answers at each
choice position per task, beside the gold share, with a warning when one position dominates (a model
that answers "A" whatever the question scores near chance, which an accuracy alone does not show).

IFEval's checker needs ``langdetect``, ``immutabledict`` and NLTK ``punkt_tab`` data; where those
are missing IFEval is skipped with the reason in ``metrics["skipped"]`` (a run asking only for
IFEval fails with that reason).
"""
from __future__ import annotations

import logging
import math
import os
import tempfile
from pathlib import Path
from typing import Any

from pydantic import Field, NonNegativeInt, PositiveInt

from ..errors import CapabilityError, UserError
from ..registry import BENCHMARKS
from ..stats.position import attach, position_metrics
from .base import Benchmark, BenchmarkOptions, EvalContext, PathStr, ReportHeadline, ReportTable, ReportView, comma_list
from . import lm_eval_tasks as lt

log = logging.getLogger(__name__)

DEFINITIONS = {
    "acc": "accuracy: share of questions where the model's highest log-likelihood choice is the gold one "
           "(lm-eval 'acc'); 0-1, higher is better; chance is 0.25 for 4-choice MMLU/GPQA",
    "acc_norm": "accuracy with each choice's log-likelihood divided by its length in bytes (lm-eval 'acc_norm'); "
                "0-1, higher is better",
    "prompt_level_strict_acc": "IFEval: share of prompts whose every instruction is followed (strict check); 0-1, higher is better",
    "inst_level_strict_acc": "IFEval: share of single instructions followed (strict check); 0-1, higher is better",
    "prompt_level_loose_acc": "IFEval: as prompt_level_strict_acc with lenient response variants; 0-1, higher is better",
    "inst_level_loose_acc": "IFEval: as inst_level_strict_acc with lenient response variants; 0-1, higher is better",
    "stderr": "lm-eval's standard error of the metric (analytic for means, bootstrap otherwise)",
    "ci_low/ci_high": "95% normal-approximation interval, value +- 1.96 x stderr, clipped to [0, 1]",
    "n": "documents evaluated (after limit)",
    "delta": "in comparisons: after minus before, same task and metric; for accuracies, "
             "negative means capability was lost",
}


def _jsonable(o: Any) -> Any:
    """lm-eval's dicts hold tuples, numpy scalars and the odd object: make them plain JSON."""
    if isinstance(o, dict):
        return {str(k): _jsonable(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [_jsonable(v) for v in o]
    if isinstance(o, float):
        return None if math.isnan(o) else o
    if o is None or isinstance(o, (str, int, bool)):
        return o
    try:
        import numpy as np

        if isinstance(o, np.generic):
            return _jsonable(o.item())
        if isinstance(o, np.ndarray):
            return _jsonable(o.tolist())
    except ImportError:
        pass
    return str(o)


@BENCHMARKS.register("capability")
class Capability(Benchmark):
    """Capability retention via lm-evaluation-harness; ``limit`` is documents per task (lm-eval takes
    the first N). Options: ``Capability.Options``."""

    description = "Capability retention: MMLU / GPQA diamond / IFEval / any lm-eval task, via lm-evaluation-harness"
    report_title = "Capability retention (lm-evaluation-harness)"
    report_intro = ("Task scores from lm-evaluation-harness on the same model weights the bias benchmarks saw. "
                    "Accuracies: 0..1, higher is better. Δ = this run − the first run (negative = capability lost).")
    report_views = (ReportView("Capability per task (lm-eval)", x="task", where={"top": True}, facet="metric",
                               ylabel="score (0..1, higher is better)", ylim=(0.0, 1.0), delta=True),)
    report_tables = (ReportTable("Capability: headline tasks", ("task", "metric"), where={"top": True}),
                     ReportTable("Capability: every subtask", ("task", "metric"), where={"top": (False, None)}))
    report_headlines = (ReportHeadline("MMLU accuracy", {"requested_task": "mmlu", "top": True, "metric": "acc"},
                                       "MMLU accuracy (lm-evaluation-harness, over the subjects run); higher is better, "
                                       "chance 0.25"),)
    batch_size = 1  # one task per evaluate call: each finished task is saved before the next starts

    class Options(BenchmarkOptions):
        tasks: comma_list(empty=["mmlu"]) = Field(
            default_factory=lambda: ["mmlu"], description="lm-eval tasks, e.g. mmlu,gpqa_diamond,ifeval")
        subjects: comma_list(empty=None) = Field(None, description="MMLU subjects (default: all)")
        num_fewshot: NonNegativeInt | None = Field(None, description="few-shot examples (default: the task's)")
        local: bool = Field(True, description="true: MMLU / GPQA / IFEval task definitions over the shared data")
        lm_eval_batch_size: PositiveInt = Field(8, exclude=True, description="lm-eval's batch size")
        bootstrap_iters: NonNegativeInt = Field(1000, description="lm-eval's bootstrap resamples for standard errors")
        max_gen_toks: PositiveInt = Field(1280, description="IFEval answer length")
        apply_chat_template: bool = Field(False, description="wrap prompts in the model's chat template")
        include_path: PathStr | None = Field(
            None, exclude=True, description="folder of further lm-eval task definitions")

    def __init__(self, **options: Any):
        super().__init__(**options)
        self.skipped: dict[str, str] = {}
        self._files: list[str] | None = None
        self._tmp: tempfile.TemporaryDirectory | None = None
        self._task_dir: Path | None = None

    # -- task definitions -------------------------------------------------------------------------
    def lm_eval_name(self, task: str) -> str:
        return (lt.local_name(task) if self.opts.local else None) or task

    def items(self) -> list[dict[str, Any]]:
        out = []
        self.skipped = {}
        for t in self.opts.tasks:
            name = self.lm_eval_name(t)
            if name == "fd_ifeval":
                problem = lt.ifeval_problem()
                if problem:
                    self.skipped[t] = problem
                    log.warning("skipping IFEval: %s", problem)
                    continue
            out.append({"id": t, "task": t, "lm_eval_task": name})
        if not out:
            raise UserError("no capability task can run here: " + "; ".join(f"{k}: {v}" for k, v in self.skipped.items()))
        return out

    def task_dir(self) -> Path:
        """Write the local task YAML (absolute data paths) once per benchmark object; return its folder."""
        if self._task_dir is not None:
            return self._task_dir
        self._tmp = tempfile.TemporaryDirectory(prefix="fairdistill-lm-eval-tasks-")
        d = Path(self._tmp.name)
        files: list[str] = []
        names = [self.lm_eval_name(t) for t in self.opts.tasks]
        subjects: list[str] = []
        if "fd_mmlu" in names:
            subjects = self.opts.subjects or lt.mmlu_subjects(self._data_for("mmlu"))
        subjects += [n[len("fd_mmlu_"):] for n in names if n.startswith("fd_mmlu_") and n[len("fd_mmlu_"):] not in subjects]
        if subjects:
            _, f = lt.write_mmlu(d, self._data_for("mmlu"), subjects)
            files += f
            if "fd_mmlu" not in names:
                (d / "fd_mmlu" / "_fd_mmlu.yaml").unlink()
        if "fd_gpqa_diamond" in names:
            files += lt.write_gpqa(d, self._data_for("gpqa"), self.opts.seed)
        if "fd_ifeval" in names and not lt.ifeval_problem():
            files += lt.write_ifeval(d, self._data_for("ifeval"), self.opts.max_gen_toks)
        self._files = files
        self._task_dir = d
        return d

    def _data_for(self, name: str) -> str | None:
        """``data`` is either a dataset folder root (holding mmlu/, gpqa/...) or None."""
        if self.opts.data is None:
            return None
        p = Path(self.opts.data) / name
        return str(p) if p.exists() else self.opts.data

    def data_files(self) -> list[str]:
        if self._files is None:
            self.task_dir()
        return list(self._files or [])

    def identity(self) -> dict[str, Any]:
        ident = super().identity()
        ident.pop("include_path", None)
        return ident

    # -- evaluation -------------------------------------------------------------------------------
    def check(self, ctx: EvalContext) -> None:
        if ctx.method is not None:
            raise UserError("capability runs lm-eval on the model itself; inference-time methods do not apply")
        if "model_object" not in ctx.backend.capabilities():
            raise CapabilityError(
                f"capability needs the in-process Hugging Face backend (hf:...); {type(ctx.backend).__name__} "
                "has no model object to hand to lm-eval")
        if ctx.backend.model_type != "causal":
            raise CapabilityError("capability (lm-eval HFLM) needs a causal LM, not a masked LM")
        try:
            import lm_eval  # noqa: F401
        except ImportError:
            raise UserError("capability needs lm-evaluation-harness: pip install 'fairdistill[eval]'") from None

    def lm(self, ctx: EvalContext):
        """An ``HFLM`` around the backend's own model object and tokenizer (no reload). When an intervention
        rescales the model's distributions (``"adjusted_logits"``), lm-eval scores with the backend's
        ``model_logits`` instead of the bare forward pass."""
        from lm_eval.models.huggingface import HFLM

        adjusted = "adjusted_logits" in ctx.backend.capabilities()
        attr = "_fd_hflm_adjusted" if adjusted else "_fd_hflm"
        # the backend's own attribute (a wrapper such as the response cache forwards unknown ones)
        cached = getattr(ctx.backend, "__dict__", {}).get(attr)
        if cached is not None:
            return cached
        model, tokenizer = ctx.backend.model_and_tokenizer()
        cls = _adjusted_hflm(ctx.backend) if adjusted else HFLM
        from ..backends.cache import CachingBackend

        if isinstance(ctx.backend, CachingBackend):
            cls = _cached_hflm(cls, ctx.backend)
        lm = cls(pretrained=model, tokenizer=tokenizer, batch_size=self.opts.lm_eval_batch_size)
        try:
            setattr(ctx.backend, attr, lm)  # one wrapper per backend
        except AttributeError:
            pass
        return lm

    def task_manager(self, names: list[str]):
        from lm_eval.tasks import TaskManager

        paths = [str(self.task_dir())] + ([self.opts.include_path] if self.opts.include_path else [])
        only_local = all(n.startswith("fd_") for n in names) and not self.opts.include_path
        return TaskManager(include_path=paths, include_defaults=not only_local)

    def run_lm_eval(self, names: list[str], ctx: EvalContext) -> dict[str, Any]:
        """One ``lm_eval.simple_evaluate`` call; returns lm-eval's results dict unchanged."""
        os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        import lm_eval

        res = lm_eval.simple_evaluate(
            model=self.lm(ctx),
            tasks=names,
            num_fewshot=self.opts.num_fewshot,
            limit=self.opts.limit,
            bootstrap_iters=self.opts.bootstrap_iters,
            log_samples=True,
            task_manager=self.task_manager(names),
            apply_chat_template=self.opts.apply_chat_template,
            random_seed=self.opts.seed,
            numpy_random_seed=1234 + self.opts.seed,
            torch_random_seed=1234 + self.opts.seed,
            fewshot_random_seed=1234 + self.opts.seed,
        )
        if res is None:
            raise UserError("lm-eval returned no results (non-zero rank in a distributed launch?)")
        return res

    def evaluate(self, items: list[dict[str, Any]], ctx: EvalContext) -> list[dict[str, Any]]:
        out = []
        for it in items:
            try:
                res = self.run_lm_eval([it["lm_eval_task"]], ctx)
            except KeyError as e:  # lm-eval's unknown task
                raise UserError(f"lm-eval does not know task {it['lm_eval_task']!r} ({e})") from None
            keep = {k: res.get(k) for k in ("results", "groups", "group_subtasks", "n-shot", "n-samples",
                                             "higher_is_better", "versions") if k in res}
            keep["lm_eval_version"] = res.get("lm_eval_version")
            keep["config"] = {k: v for k, v in (res.get("config") or {}).items() if k != "model_args"}
            samples = {}
            for task, ss in (res.get("samples") or {}).items():
                samples[task] = [
                    {k: s.get(k) for k in ("doc_id", "target", "filtered_resps", "acc", "acc_norm", "exact_match",
                                           "prompt_level_strict_acc", "inst_level_strict_acc",
                                           "prompt_level_loose_acc", "inst_level_loose_acc") if k in s}
                    for s in ss
                ]
            out.append(_jsonable({**it, "lm_eval": keep, "samples": samples}))
        return out

    # -- metrics ----------------------------------------------------------------------------------
    def metrics(self, records: list[dict[str, Any]]) -> dict[str, Any]:
        rows: list[dict[str, Any]] = []
        merged: dict[str, dict] = {"results": {}, "groups": {}, "group_subtasks": {}, "n-samples": {},
                                   "n-shot": {}, "higher_is_better": {}, "versions": {}}
        summary: dict[str, Any] = {}
        for rec in records:
            le = rec.get("lm_eval", {})
            for k in merged:
                merged[k].update(le.get(k) or {})
            top = rec["lm_eval_task"]
            groups = le.get("groups") or {}
            new = []
            for task, res in (le.get("results") or {}).items():
                new += _task_rows(rec["task"], task, res, le, is_top=(task == top),
                                  is_group=task in groups)
            rows += new
            for r in new:
                if r["top"]:
                    summary[f"{rec['task']}/{r['metric']}"] = r["value"]
        merged["lm_eval_version"] = next((r["lm_eval"].get("lm_eval_version") for r in records), None)
        out = {
            "rows": rows,
            "summary": summary,
            "definitions": _definitions_for(rows),
            "skipped": dict(self.skipped),
            "lm_eval": merged,
        }
        attach(out, answer_positions(records, seed=self.opts.seed), "Answer positions (multiple-choice tasks)",
               "letter_share: share of answers at each choice position (A = first choice; gold_share in "
               "metrics.json); position_bias: the top position's share / its gold share (1 = none)")
        return out

    def summary_table(self, metrics: dict[str, Any]) -> list[dict[str, Any]]:
        return [{k: r[k] for k in ("task", "metric", "value", "ci_low", "ci_high", "n")}
                for r in metrics.get("rows", []) if r.get("level") in ("task", "group") and r.get("top")]

    # -- paired comparison: one lm-eval sample (question) is the unit, its 0/1 score the outcome, so a
    # mitigation's capability cost gets McNemar's test and the fixed/broken table, not two overlapping CIs
    paired_binary = ("accuracy", "correct")

    @classmethod
    def paired_units(cls, records: list[dict[str, Any]]) -> list[dict[str, Any]]:
        units = []
        for rec in records:
            for task, samples in (rec.get("samples") or {}).items():
                for s in samples:
                    score = next((s[k] for k in _PAIRED_SCORES if isinstance(s.get(k), (int, float))), None)
                    if score is None:
                        continue
                    if score not in (0, 1):
                        raise UserError(f"capability sample {task}/{s.get('doc_id')} has a score of {score}, "
                                        "not 0 or 1: no paired accuracy for it")
                    units.append({"id": f"{task}/{s.get('doc_id')}", "cell": rec["task"], "correct": bool(score)})
        if not units:
            raise UserError("the capability run holds no per-sample scores (lm-eval's samples with acc, "
                            "exact_match or prompt_level_strict_acc): rerun it to compare item by item")
        return units

    @classmethod
    def paired_statistics(cls, cell: str) -> dict[str, Any]:
        return {"accuracy": lambda a: a["correct"].mean(-1)}

    @classmethod
    def paired_definitions(cls) -> dict[str, str]:
        return {"accuracy": "share of a task's samples scored correct (lm-eval's acc, else exact_match or "
                            "prompt_level_strict_acc); the task's samples (questions) are the paired units"}


#: the per-sample 0/1 score a paired comparison uses, first found
_PAIRED_SCORES = ("acc", "exact_match", "prompt_level_strict_acc")


def answer_positions(records: list[dict[str, Any]], seed: int = 0) -> dict[str, Any] | None:
    """Choice-position distribution of the multiple-choice samples, per requested task
    (:func:`fairdistill.stats.position.position_metrics`); None when no sample is multiple-choice."""
    rows: list[dict[str, Any]] = []
    warnings: list[str] = []
    out: dict[str, Any] | None = None
    for rec in records:
        chosen, gold, item, width = [], [], [], 0
        for task, samples in (rec.get("samples") or {}).items():
            for s in samples:
                resps, target = s.get("filtered_resps"), s.get("target")
                # a multiple-choice sample: one (log-likelihood, is_greedy) per choice and the gold index
                if not (isinstance(resps, list) and resps and all(
                        isinstance(r, (list, tuple)) and r and isinstance(r[0], (int, float)) for r in resps)):
                    continue
                if isinstance(target, bool) or not isinstance(target, int) or not 0 <= target < len(resps):
                    continue
                lls = [float(r[0]) for r in resps]
                chosen.append(max(range(len(lls)), key=lls.__getitem__))  # lm-eval's acc: the first argmax
                gold.append(target)
                item.append(f"{task}/{s.get('doc_id')}")
                width = max(width, len(resps))
        if not chosen or width > 10:
            continue
        pm = position_metrics(chosen, gold, item, n_letters=width, seed=seed,
                              advice="check the model (or its training) before reading its accuracy")
        out = out or {"rows": rows, "definitions": pm["definitions"], "warning": None}
        rows += [{"task": rec["task"], **r} for r in pm["rows"]]
        if pm["warning"]:
            warnings.append(f"{rec['task']}: {pm['warning']}")
    if out is not None and warnings:
        out["warning"] = "; ".join(warnings)
    return out


#: lm-eval log-likelihood requests per response-cache call (each call's answers are committed at once)
LOGLIK_CHUNK = 256


def _cached_hflm(base: type, cache) -> type:
    """``base`` (an HFLM class) whose log-likelihood requests go through fairdistill's response cache
    (:class:`~fairdistill.backends.cache.CachingBackend`): keyed by the model's identity and lm-eval's
    request, stored as JSON (lm-eval's own ``CachingLM`` pickles and ignores which model answered), so
    a rerun on a fresh machine with the cache restored scores nothing again."""

    class CachedHFLM(base):
        def loglikelihood(self, requests, disable_tqdm: bool = False):
            out: list[tuple[float, bool]] = []
            # lm-eval hands over every request of the run at once: stored a chunk at a time, an interrupted
            # run (hours under self-debias on a large task) keeps what it has scored
            for start in range(0, len(requests), LOGLIK_CHUNK):
                part = requests[start:start + LOGLIK_CHUNK]
                args = [[str(a) for a in r.args] for r in part]
                res = cache._cached("lm_eval.loglikelihood", args, [True] * len(args), lambda idx, part=part: [
                    [float(lp), bool(greedy)]
                    for lp, greedy in base.loglikelihood(self, [part[i] for i in idx], disable_tqdm=disable_tqdm)])
                out += [(float(lp), bool(greedy)) for lp, greedy in res]
            return out

    return CachedHFLM


def _adjusted_hflm(backend):
    """An HFLM subclass whose causal forward pass is ``backend.model_logits`` (the intervention's distributions)."""
    from lm_eval.models.huggingface import HFLM

    class AdjustedHFLM(HFLM):
        def _model_call(self, inps, attn_mask=None, labels=None):
            if attn_mask is not None or labels is not None:  # seq2seq only; not served here
                return super()._model_call(inps, attn_mask, labels)
            return backend.model_logits(inps)

        def _model_generate(self, context, max_length, stop, **kw):
            from transformers import LogitsProcessorList

            att = kw.get("attention_mask")
            prompts = [row[m.bool()].tolist() for row, m in zip(context, att)] if att is not None \
                else [row.tolist() for row in context]
            kw["logits_processor"] = LogitsProcessorList(list(kw.get("logits_processor") or [])
                                                         + backend.logits_processors(prompts))
            return super()._model_generate(context, max_length, stop, **kw)

    return AdjustedHFLM


def _definitions_for(rows: list[dict[str, Any]]) -> dict[str, str]:
    """The metric definitions of the metrics present, plus the generic ones."""
    present = {r["metric"] for r in rows}
    generic = ("stderr", "ci_low/ci_high", "n", "delta")
    out = {k: v for k, v in DEFINITIONS.items() if k in present or k in generic}
    for m in sorted(present - set(DEFINITIONS)):
        out[m] = f"lm-eval metric {m!r}; see the task's documentation for its range and direction"
    return out


def _leaf_n(task: str, le: dict) -> int | None:
    """Documents evaluated in a task, or summed over a group's leaf tasks."""
    ns = le.get("n-samples") or {}
    if task in ns:
        return (ns[task] or {}).get("effective")
    subs = (le.get("group_subtasks") or {}).get(task)
    if not subs:
        return None
    parts = [_leaf_n(s, le) for s in subs]
    return sum(p for p in parts if p is not None) if any(p is not None for p in parts) else None


def _task_rows(requested: str, task: str, res: dict, le: dict, is_top: bool, is_group: bool) -> list[dict[str, Any]]:
    rows = []
    n = _leaf_n(task, le)
    hib = (le.get("higher_is_better") or {}).get(task) or {}
    alias = res.get("alias", task)
    for key, value in res.items():
        if "," not in key or "_stderr," in key or key == "alias":
            continue
        metric, filt = key.split(",", 1)
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            continue
        se = res.get(f"{metric}_stderr,{filt}")
        se = se if isinstance(se, (int, float)) and not (isinstance(se, float) and math.isnan(se)) else None
        lo = hi = None
        if se is not None:
            lo, hi = value - 1.96 * se, value + 1.96 * se
            if 0 <= value <= 1:
                lo, hi = max(0.0, lo), min(1.0, hi)
        rows.append({
            "requested_task": requested,
            "task": str(alias).strip().lstrip("- ").strip() or task,
            "lm_eval_task": task,
            "level": "group" if is_group else "task",
            "top": is_top,
            "metric": metric,
            "filter": filt,
            "value": value,
            "stderr": se,
            "ci_low": lo,
            "ci_high": hi,
            "n": n,
            "higher_is_better": hib.get(metric, True),
        })
    return rows
