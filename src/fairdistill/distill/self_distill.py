"""Self-distillation of debiased behaviour (this project's synthesis, METHODS.md).

The teacher is the model itself wrapped in an inference-time method (``reprompting``,
``explanation``, ``adjudication``, ...), which needs several model calls per question. A LoRA adapter
(peft) is trained so that the plain model, asked the benchmark's one-turn question, gives the
teacher's answer in one call. Every evaluation is a run of the one pipeline
(:func:`fairdistill.runner.execute`), so each stage resumes, has metrics with CIs and can be compared
item by item like any other run. Stages of :func:`run_self_distill`:

1. **items**: a benchmark that takes methods (BBQ) with its options; ``condition=both`` is one run
   per context condition, so runs made earlier with the same options are answered from a response
   cache. Split into train / held-out (``split=template``: whole templates held out, so held-out
   items are other templates, not paraphrases of trained ones);
2. **teacher** on every item (``teacher/<condition>/``);
3. **SFT set** (``sft.jsonl``) from the teacher's answers on train items: its option letter
   (``target=letter``), its text (``text``), or the chosen option's text under a seeded shuffled
   option order (``option``, the default: a letter prior cannot pass for the behaviour); LoRA SFT
   (:mod:`fairdistill.distill.sft`); the merged student is saved to ``student_model/``;
4. **held-out evaluation** (``heldout/<condition>/{teacher,untrained,student}/``, run folders): the
   benchmark's metrics with CIs, paired comparisons against the untrained model, agreement with the
   teacher for student, untrained model and the best constant answer (McNemar tests), calls per item;
5. **transfer**: benchmarks it was not trained on (``transfer``, e.g. occupation-gender, b-score),
   untrained vs student (``transfer/<benchmark>/{untrained,student}/``).

The teacher's and the untrained model's calls go through a response cache (``cache``, default
``out/responses.sqlite``): the held-out teacher run re-reads the teacher's answers, and a rerun or a
resumed run asks nothing twice. Evaluation runs in ``dtype`` (default ``auto``: bf16 with float32
re-scoring where the CPU has native bf16); training in float32 on CPU.
"""
from __future__ import annotations

import gc
import json
import os
import random
from collections import Counter
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Callable, Sequence

from ..distributed import barrier, dist_env
from ..errors import UserError, reject_unknown_options
from ..methods.base import Method, user_turn
from .sft import SFTConfig, encode_chat_example, train_lora_sft, write_jsonl  # noqa: F401 (re-exported)

LETTERS = "ABCDEFGHIJ"
WHO = ("teacher", "untrained", "student")


@dataclass
class SelfDistillConfig(SFTConfig):
    """Options of :func:`run_self_distill` (keywords); training options from :class:`SFTConfig`."""

    benchmark: str = "bbq"            # a benchmark that takes methods
    limit: int | None = 50            # items per category and condition (the benchmark's own limit)
    categories: str | None = None     # comma-separated categories (default: all present)
    condition: str = "both"           # both | ambig | disambig; both = one run per condition
    permute: str = "none"             # none | cyclic: teacher, untrained and student answer every rotation
    benchmark_options: dict = field(default_factory=dict)  # any further benchmark option
    heldout: float = 0.3              # fraction of items held out for evaluation
    split: str = "template"           # held-out items: whole templates ("template"), "random", or "explicit"
    items: Any = None                 # split=explicit: the item ids (list or "@FILE"), train and held-out together
    heldout_items: Any = None         # split=explicit: the held-out ids among them (list or "@FILE")
    target: str = "option"            # SFT target: "option" text under a shuffled order, "letter", "text"
    max_new_tokens: int = 16          # answer length of teacher / untrained / student
    method_options: dict = field(default_factory=dict)  # the teacher method's options
    cache: str | None = None          # response cache (sqlite) of teacher and untrained calls
    dtype: str = "auto"               # dtype of every evaluation
    backend_options: dict = field(default_factory=dict)  # backend options of every evaluation (rescore_margin, ...)
    evaluate: bool = True
    eval_train: bool = False          # also evaluate untrained model and student on the training items
    transfer: list = field(default_factory=list)  # benchmarks not trained on: names or {name, options}

    @classmethod
    def from_kwargs(cls, **kw: Any) -> "SelfDistillConfig":
        reject_unknown_options(kw, (f.name for f in fields(cls)), "self-distillation")
        cfg = cls(**kw)
        for name, allowed in (("target", ("letter", "text", "option")), ("split", ("random", "template", "explicit")),
                              ("condition", ("both", "ambig", "disambig")), ("permute", ("none", "cyclic"))):
            if getattr(cfg, name) not in allowed:
                raise UserError(f"unknown {name} {getattr(cfg, name)!r}; use {', '.join(allowed)}")
        if not 0 < cfg.heldout < 1:
            raise UserError("heldout must be a fraction in (0, 1)")
        if isinstance(cfg.transfer, str):
            cfg.transfer = [t for t in cfg.transfer.split(",") if t]
        return cfg


# -- stage 1: items ------------------------------------------------------------------------------
def item_specs(model: str, prompts: str, cfg: SelfDistillConfig) -> dict[str, Any]:
    """condition -> RunSpec of the plain model on the items. ``prompts``: a benchmark name, its data
    folder, or one BBQ category file (``.../Age.jsonl``: that category's folder and name)."""
    from ..registry import BENCHMARKS
    from ..runner import RunSpec

    bench, data, cats = cfg.benchmark, None, cfg.categories
    if prompts in BENCHMARKS.names():
        bench = prompts
    elif str(prompts) != "bbq":
        p = Path(prompts).expanduser()
        if not p.exists():
            raise UserError(f"prompt set not found: {prompts} (give a benchmark name, its data folder or a category file)")
        if p.is_file():
            if p.suffix != ".jsonl":
                raise UserError(f"{p}: self-distillation reads a benchmark's items; give its data folder or a category .jsonl")
            data, cats = str(p.parent), cats or p.stem
        else:
            data = str(p)
    cls = BENCHMARKS.get(bench)
    cls.check_method("teacher")
    fields_ = cls.Options.model_fields
    opts = {"mode": "generate", "max_new_tokens": cfg.max_new_tokens, "categories": cats,
            **({"permute": cfg.permute} if cfg.permute != "none" else {}), **cfg.benchmark_options}
    opts = {k: v for k, v in opts.items() if k in fields_ or k in cfg.benchmark_options}
    conds = ["ambig", "disambig"] if cfg.condition == "both" else [cfg.condition]
    if "condition" not in fields_:
        conds = ["all"]
    return {c: RunSpec(model=model, benchmark=bench, options={**opts, **({"condition": c} if c != "all" else {})},
                       seed=cfg.seed, data=data, limit=cfg.limit) for c in conds}


def split_items(benches: dict[str, Any], items: dict[str, list[dict]], heldout: float, seed: int,
                by: str = "template") -> set[str]:
    """The held-out item ids. ``by="template"``: whole templates (the benchmark's ``template_key``,
    across conditions) are held out until the held-out share reaches ``heldout``."""
    keyed = [(benches[c].template_key(it) if by == "template" else None, it["id"]) for c in items for it in items[c]]
    if by == "template" and any(k is None for k, _ in keyed):
        raise UserError(f"benchmark {next(iter(benches.values())).name!r} has no templates; use split=random")
    n_held = int(round(len(keyed) * heldout))
    groups: dict[str, list[str]] = {}
    for k, i in keyed:
        groups.setdefault(str(k) if by == "template" else i, []).append(i)
    order = sorted(groups)
    random.Random(f"split-{seed}").shuffle(order)
    held: set[str] = set()
    for g in order:
        if len(held) >= n_held:
            break
        held.update(groups[g])
    return held


# -- stage 3: SFT examples -----------------------------------------------------------------------
def sft_example(bench, item: dict, record: dict, target: str, seed: int) -> dict[str, Any] | None:
    """The baseline question and the completion the student should learn; None when the teacher's
    answer cannot serve as this target (no parsed option; ``text`` under rotation naming another option)."""
    pred = record.get("pred")
    if pred is None:
        return None
    pred = int(pred)
    if target == "option":
        order = list(range(len(bench.question(item).options)))
        random.Random(f"order-{seed}-{item['id']}").shuffle(order)
        q = bench.question(item, order)
        return {"messages": [{"role": "user", "content": user_turn(q)}], "completion": q.options[order.index(pred)],
                "order": order}
    q = bench.question(item)
    if target == "letter":
        return {"messages": [{"role": "user", "content": user_turn(q)}], "completion": LETTERS[pred]}
    # text: the teacher's own words in the dataset's option order
    first = (record.get("rotations") or [record])[0]
    if first.get("option", pred) != pred or first.get("order", list(range(len(q.options)))) != list(range(len(q.options))):
        return None
    return {"messages": [{"role": "user", "content": user_turn(q)}], "completion": first["final_text"]}


# -- teacher -------------------------------------------------------------------------------------
def make_teacher(method: str | Method | type | Callable, backend, options: dict) -> tuple[Method, str]:
    """(Method instance, name) from a registered name, a Method, a Method subclass or a factory(backend)."""
    from ..methods.base import get_method

    if isinstance(method, str):
        return get_method(method, backend, **options), method
    if isinstance(method, Method):
        m = method
    elif isinstance(method, type) and issubclass(method, Method):
        m = method(backend, **options)
    elif callable(method):
        m = method(backend)
    else:
        raise UserError(f"cannot use {method!r} as a teacher method")
    return m, getattr(m, "name", type(m).__name__)


# -- evaluation summaries ------------------------------------------------------------------------
def _agree(a: dict, b: dict) -> bool:
    return a.get("pred") is not None and a.get("pred") == b.get("pred")


def agreement_summary(bench_of: Callable[[str], Any], items: dict[str, dict], recs: dict[str, dict[str, dict]],
                      constant_role: str | None) -> dict[str, Any]:
    """Agreement with the teacher of the untrained model, the student and the best constant answer
    on the same items, with McNemar's exact tests (student vs each); answer roles; calls per item."""
    from ..stats.paired import mcnemar_exact

    ids = [i for i in items if recs["teacher"][i].get("pred") is not None]
    t = recs["teacher"]

    def const_pred(i: str) -> int | None:
        it = items[i]
        n = len(bench_of(i).question(it).options)
        return next((k for k in range(n) if bench_of(i).answer_role(it, k) == constant_role), None)

    hits = {"untrained": [_agree(recs["untrained"][i], t[i]) for i in ids],
            "student": [_agree(recs["student"][i], t[i]) for i in ids],
            "constant": [const_pred(i) == t[i]["pred"] for i in ids]}  # the teacher's pred is never None here
    out: dict[str, Any] = {"n": len(ids), "teacher_unparsed": len(items) - len(ids),
                           "constant_answer": constant_role}
    for who, h in hits.items():
        out[f"{who}_vs_teacher"] = round(sum(h) / len(h), 4) if h else None
        out[f"{who}_agrees"] = sum(h)
    for other in ("untrained", "constant"):
        test = mcnemar_exact(hits[other], hits["student"])
        out[f"student_vs_{other}_mcnemar"] = {"student_only": test["incorrect->correct"],
                                              f"{other}_only": test["correct->incorrect"], "p_value": test["p_value"]}
    changed = [k for k, i in enumerate(ids) if recs["untrained"][i].get("pred") != t[i]["pred"]]
    out["where_teacher_changed_answer"] = {"n": len(changed),
                                           "student_matches_teacher": sum(hits["student"][k] for k in changed)}

    def role(i: str, who: str) -> str:
        p = recs[who][i].get("pred")
        return "unparsed" if p is None else (bench_of(i).answer_role(items[i], int(p)) or "other")

    out["answers"] = {who: dict(sorted(Counter(role(i, who) for i in items).items())) for who in WHO}
    out["calls_per_item"] = {who: round(sum(recs[who][i].get("calls") or 1 for i in items) / max(len(items), 1), 3)
                             for who in WHO}
    return out


AGREEMENT_DEFINITIONS = {
    "agreement with teacher": "share of the items the teacher answered on which this model (or the constant answer) "
                              "gave the teacher's option; 95% Wilson interval",
    "p (student vs this)": "McNemar exact test of the student's agreement against this row's, item by item",
    "constant": "the best constant answer: always the answer role (unknown / biased / anti-biased) the teacher "
                "gave most often on the training items",
}


def write_summary_run(folder: Path, evaluation: dict[str, Any], identity: dict[str, Any]) -> None:
    """The agreement figures as a run folder of tidy rows, so reports render them like any benchmark."""
    from scipy.stats import binomtest

    rows = []
    for split in ("heldout", "train"):
        ag = (evaluation.get(split) or {}).get("agreement")
        if not ag:
            continue
        for who in ("student", "untrained", "constant"):
            v, n = ag[f"{who}_vs_teacher"], ag["n"]
            lo = hi = None
            if n:
                ci = binomtest(ag[f"{who}_agrees"], n).proportion_ci(method="wilson")
                lo, hi = ci.low, ci.high
            p = None if who == "student" else ag[f"student_vs_{who}_mcnemar"]["p_value"]
            rows.append({"split": split, "model": who + (f" ({ag['constant_answer']})" if who == "constant" else ""),
                         "metric": "agreement with teacher", "value": v, "ci_low": lo, "ci_high": hi, "n": n,
                         "p (student vs this)": p})
        for who, calls in ag["calls_per_item"].items():
            rows.append({"split": split, "model": who, "metric": "calls per item", "value": calls, "n": ag["n"]})
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps({"identity": identity}, indent=2, default=str))
    (folder / "metrics.json").write_text(json.dumps({"rows": rows, "definitions": AGREEMENT_DEFINITIONS}, indent=2,
                                                    default=str))


def _overall_rows(run_dir: Path) -> list[dict]:
    m = json.loads((run_dir / "metrics.json").read_text())
    return [r for r in m.get("rows", []) if r.get("category", "overall") == "overall"]


def _comparison_rows(comp: dict) -> list[dict]:
    return [r for r in comp["rows"] if r.get("run") == "difference"]


# -- the pipeline --------------------------------------------------------------------------------
def run_self_distill(model: str | Any, method: str | Method | type | Callable, prompts: str = "bbq",
                     out: str = "runs/self-distill", **config: Any) -> dict[str, Any]:
    """Self-distil an inference-time method into a LoRA adapter on the plain model (stages: module docstring).

    Arguments:
        model: model string (built-in name such as ``qwen2.5-coder-1.5b``, folder, hub id), or an
            in-process :class:`~fairdistill.backends.hf.HFBackend` (tests; the adapter is then taken
            out of its model again at the end).
        method: the teacher: a registered method name (options via ``method_options={...}``), or a
            Method instance / subclass / factory ``backend -> Method`` (custom teachers, test doubles).
        prompts: ``"bbq"`` (or another benchmark name), the benchmark's data folder, or one BBQ
            category file.
        out: output folder (see the module docstring for its layout); rerun to resume.
        **config: any :class:`SelfDistillConfig` field.

    Returns the summary written to ``out/self_distill.json``.
    """
    job = _Job(model, prompts, Path(out), SelfDistillConfig.from_kwargs(**config))
    eval_be = _eval_backend(model, job.cfg, job.out)
    teacher, job.teacher_name = make_teacher(method, eval_be, job.cfg.method_options)
    t_recs = job.teacher_answers(eval_be, teacher)
    if job.cfg.evaluate:
        job.evaluate_before(eval_be, teacher)
    sft, skipped = job.sft_set(t_recs)
    eval_be.close()  # the in-process model stays usable: an HF backend's close releases nothing
    del eval_be, teacher
    gc.collect()
    student_be, peft_model, train_info = job.train(sft)
    summary: dict[str, Any] = {
        "model": job.model_name, "method": job.teacher_name, "benchmark": next(iter(job.specs.values())).benchmark,
        "prompts": str(prompts), "config": asdict(job.cfg), "n_items": len(job.cond_of), "n_train": len(job.train_ids),
        "n_heldout": len(job.held), "sft_examples": len(sft), "sft_skipped": skipped, **train_info,
        **({} if job.in_process else {"model_dir": str(job.student_dir.resolve())}),
    }
    try:
        if job.cfg.evaluate:
            summary.update(job.evaluate_after(student_be, t_recs))
        summary["report_runs"] = [[str(d), label] for d, label in job.report_runs()] if job.cfg.evaluate else []
        if dist_env().is_main:
            (job.out / "self_distill.json").write_text(json.dumps(summary, indent=2, default=str))
    finally:
        if peft_model is not None:  # peft injected the adapter into the caller's model: take it out
            peft_model.unload()
    return summary


class _Job:
    """The state the stages share: items, split, run folders."""

    def __init__(self, model: Any, prompts: str, out: Path, cfg: SelfDistillConfig):
        from ..backends.hf import HFBackend

        self.cfg, self.out = cfg, out
        out.mkdir(parents=True, exist_ok=True)
        self.in_process = isinstance(model, HFBackend)
        self.model = model
        self.model_name = model.name if self.in_process else str(model)
        self.specs = item_specs(self.model_name, prompts, cfg)
        self.benches = {c: s.build_benchmark() for c, s in self.specs.items()}  # bad options fail before a model loads
        items = {c: b.load_items() for c, b in self.benches.items()}
        self.cond_of = {it["id"]: c for c in items for it in items[c]}
        self.item = {it["id"]: it for c in items for it in items[c]}
        if len(self.cond_of) != sum(map(len, items.values())):
            raise UserError("item ids repeat across conditions; self-distillation needs unique ids")
        if cfg.split == "explicit":
            items = self._explicit_items(items)
        else:
            self.held = split_items(self.benches, items, cfg.heldout, cfg.seed, by=cfg.split)
        self.train_ids = [i for i in self.cond_of if i not in self.held]
        self.splits = {"heldout": sorted(self.held), **({"train": sorted(self.train_ids)} if cfg.eval_train else {})}
        self.dirs: dict[str, dict[str, dict[str, Path]]] = {}
        self.transfer = [_transfer_entry(t) for t in cfg.transfer]
        self.transfer_dirs: dict[str, dict[str, Path]] = {}
        self.student_dir = out / "student_model"
        self.student_name = self.model_name + "+self-distill" if self.in_process else str(self.student_dir)
        self.teacher_name = "teacher"

    def _explicit_items(self, items: dict[str, list[dict]]) -> dict[str, list[dict]]:
        """split=explicit: the items and the held-out ids fixed before the study (e.g. by a committed draw); each
        condition's runs evaluate exactly its listed items (the ``ids`` benchmark option)."""
        from ..benchmarks.base import ids_option

        try:
            wanted, held = ids_option(self.cfg.items), ids_option(self.cfg.heldout_items)
        except ValueError as e:
            raise UserError(f"self-distillation: {e}") from None
        if not wanted or not held:
            raise UserError("split=explicit needs items and heldout_items (lists of ids or @FILE)")
        unknown = [i for i in wanted if i not in self.cond_of]
        if unknown:
            raise UserError(f"self-distillation: {len(unknown)} listed items are not among the benchmark's items "
                            f"(e.g. {unknown[0]!r})")
        stray = [i for i in held if i not in set(wanted)]
        if stray:
            raise UserError(f"self-distillation: {len(stray)} held-out ids are not among the listed items (e.g. {stray[0]!r})")
        keep = set(wanted)
        for c, spec in self.specs.items():
            ids = [it["id"] for it in items[c] if it["id"] in keep]
            self.specs[c] = spec.model_copy(update={"options": {**spec.options, "ids": ids}})
            self.benches[c] = self.specs[c].build_benchmark()
        items = {c: b.load_items() for c, b in self.benches.items()}
        self.cond_of = {it["id"]: c for c in items for it in items[c]}
        self.item = {it["id"]: it for c in items for it in items[c]}
        self.held = set(held)
        return items

    def run(self, cond: str, who: str, backend, *, ids: Sequence[str] | None = None, teacher: Method | None = None,
            sub: str = "heldout") -> Path:
        from ..runner import execute

        spec = self.specs[cond]
        opts = dict(spec.options) if ids is None else {**spec.options, "ids": [i for i in ids if self.cond_of[i] == cond]}
        upd: dict[str, Any] = {"options": opts, "model": self.student_name if who == "student" else self.model_name,
                               "out": self.out / (f"teacher/{cond}" if sub == "all" else f"{sub}/{cond}/{who}")}
        if teacher is not None:
            upd.update(method=self.teacher_name, method_options=self.cfg.method_options)
        run_dir, _ = execute(spec.model_copy(update=upd), backend, method=teacher, show_progress=self.cfg.progress,
                             extra_config={"self_distill": {"role": who, "split": sub}})
        return run_dir

    def teacher_answers(self, backend, teacher: Method) -> dict[str, dict]:
        return {i: r for c in self.specs for i, r in _records(self.run(c, "teacher", backend, teacher=teacher,
                                                                       sub="all")).items()}

    def evaluate_before(self, backend, teacher: Method) -> None:
        """The teacher (from the cache) and the untrained model on the evaluated items; transfer benchmarks."""
        for sub, ids in self.splits.items():
            for c in self.specs:
                d = self.dirs.setdefault(sub, {}).setdefault(c, {})
                d["teacher"] = self.run(c, "teacher", backend, ids=ids, teacher=teacher, sub=sub)
                d["untrained"] = self.run(c, "untrained", backend, ids=ids, sub=sub)
        for t in self.transfer:
            self.transfer_dirs[t["key"]] = {"untrained": _transfer(t, self.model_name, backend, self.out, "untrained",
                                                                   self.cfg)}

    def sft_set(self, t_recs: dict[str, dict]) -> tuple[list[dict], int]:
        sft, skipped = [], 0
        for i in self.train_ids:
            ex = sft_example(self.benches[self.cond_of[i]], self.item[i], t_recs[i], self.cfg.target, self.cfg.seed)
            if ex is None:
                skipped += 1
            else:
                sft.append({"id": i, **ex})
        write_jsonl(self.out / "sft.jsonl", sft)
        return sft, skipped

    def train(self, sft: list[dict]):
        """(student backend, the peft model to unload afterwards or None, train summary)."""
        from ..backends.hf import HFBackend

        if self.in_process:
            m = self.model
            peft_model, info = train_lora_sft(m.model, m.tokenizer, sft, self.out, self.cfg)
            return (HFBackend(peft_model, m.tokenizer, name=self.student_name, batch_size=m.batch_size, device=m.device),
                    peft_model, info)
        from ..backends.base import load_backend

        info = _train_and_merge(self.model_name, sft, self.out, self.student_dir, self.cfg)
        return load_backend(str(self.student_dir), dtype=self.cfg.dtype, device=self.cfg.device,
                                    **self.cfg.backend_options), None, info

    def evaluate_after(self, student_be, t_recs: dict[str, dict]) -> dict[str, Any]:
        for sub, ids in self.splits.items():
            for c in self.specs:
                self.dirs[sub][c]["student"] = self.run(c, "student", student_be, ids=ids, sub=sub)
        for t in self.transfer:
            self.transfer_dirs[t["key"]]["student"] = _transfer(t, self.student_name, student_be, self.out, "student",
                                                                self.cfg)
        out = _evaluation(self, t_recs)
        out["transfer"] = {k: _transfer_summary(d, self.cfg) for k, d in self.transfer_dirs.items()}
        if dist_env().is_main:
            write_summary_run(self.out / "summary", out, {"benchmark": "self-distillation", "model": self.model_name,
                                                          "method": self.teacher_name,
                                                          "items": next(iter(self.specs.values())).benchmark})
        return out

    def report_runs(self) -> list[tuple[Path, str]]:
        """(run folder, label) of what a report shows: the summary, then the held-out runs."""
        runs = [(self.out / "summary", f"self-distillation of {self.teacher_name}")]
        for c, d in (self.dirs.get("heldout") or {}).items():
            runs += [(d[who], f"held-out {c}: {who}") for who in WHO if who in d]
        return runs


def _records(run_dir: Path) -> dict[str, dict]:
    from ..store import RunStore

    return {r["id"]: r for r in RunStore(run_dir).load_results()}


def _eval_backend(model: Any, cfg: SelfDistillConfig, outp: Path):
    from ..backends.base import load_backend
    from ..backends.cache import CachingBackend

    be = model if not isinstance(model, str) else load_backend(model, dtype=cfg.dtype, device=cfg.device,
                                                                         **cfg.backend_options)
    return CachingBackend(be, cfg.cache or outp / "responses.sqlite")


def _train_and_merge(model: str, sft: list[dict], outp: Path, student_dir: Path, cfg: SelfDistillConfig) -> dict:
    """Train the adapter on a float32 copy of the model and save base + adapter merged (evaluable by path);
    a finished student is reused on a rerun."""
    from ..backends.hf import HFBackend
    from .fairdistill import _resolve_device

    done = outp / "train_summary.json"
    if (student_dir / "config.json").exists() and done.exists():
        return json.loads(done.read_text())
    be = HFBackend.from_spec(model, device=_resolve_device(cfg.device), dtype="float32")
    peft_model, info = train_lora_sft(be.model, be.tokenizer, sft, outp, cfg)
    if dist_env().is_main:  # one rank writes the merged student; the others wait for it
        tmp = student_dir.with_name(student_dir.name + ".partial")
        peft_model.merge_and_unload().save_pretrained(tmp)
        be.tokenizer.save_pretrained(tmp)
        if student_dir.exists():
            import shutil

            shutil.rmtree(student_dir)
        os.replace(tmp, student_dir)
        done.write_text(json.dumps(info, indent=2, default=str))
    barrier()
    del be, peft_model
    gc.collect()
    return info


def _transfer_entry(t: str | dict) -> dict:
    if isinstance(t, str):
        return {"name": t, "options": {}, "key": t}
    if not isinstance(t, dict) or "name" not in t:
        raise UserError(f"transfer entry {t!r}: give a benchmark name or {{name, options}}")
    return {"name": t["name"], "options": dict(t.get("options") or {}), "key": t.get("id", t["name"])}


def _transfer(t: dict, model_name: str, backend, out: Path, who: str, cfg: SelfDistillConfig) -> Path:
    from ..runner import RunSpec, execute

    spec = RunSpec(model=model_name, benchmark=t["name"], options=t["options"], seed=cfg.seed,
                   out=out / "transfer" / t["key"] / who)
    run_dir, _ = execute(spec, backend, show_progress=cfg.progress, extra_config={"self_distill": {"role": who}})
    return run_dir


def _transfer_summary(d: dict[str, Path], cfg: SelfDistillConfig) -> dict[str, Any]:
    from ..compare import compare

    out: dict[str, Any] = {who: {"dir": str(p), "rows": _overall_rows(p)} for who, p in d.items()}
    try:
        comp = compare(d["untrained"], d["student"], seed=cfg.seed)
        if dist_env().is_main:
            (d["student"] / "comparison.json").write_text(json.dumps(comp, indent=2, default=str))
        out["student_minus_untrained"] = _comparison_rows(comp)
    except UserError as e:  # a benchmark without paired units: its metrics side by side
        out["comparison"] = str(e)
    return out


def _evaluation(job: _Job, t_recs: dict[str, dict]) -> dict[str, Any]:
    """Per split: agreement with the teacher, the benchmark's overall metrics (CIs) of teacher, untrained
    model and student, and paired comparisons of teacher and student against the untrained model."""
    from ..compare import compare

    bench_of = lambda i: job.benches[job.cond_of[i]]  # noqa: E731
    roles = Counter(bench_of(i).answer_role(job.item[i], int(t_recs[i]["pred"]))
                    for i in job.train_ids if t_recs[i].get("pred") is not None)
    # the best constant answer: the role the teacher gave most often on the training items
    constant = roles.most_common(1)[0][0] if roles else None
    out: dict[str, Any] = {"constant_answer_role": constant, "teacher_roles_train": dict(roles)}
    for sub, per_cond in job.dirs.items():
        recs: dict[str, dict[str, dict]] = {who: {} for who in WHO}
        block: dict[str, Any] = {"metrics": {}, "comparisons": {}}
        for c, d in per_cond.items():
            for who in WHO:
                recs[who].update(_records(d[who]))
                block["metrics"].setdefault(c, {})[who] = _overall_rows(d[who])
            for who in ("teacher", "student"):
                comp = compare(d["untrained"], d[who], seed=job.cfg.seed)
                if dist_env().is_main:
                    (d[who] / "comparison.json").write_text(json.dumps(comp, indent=2, default=str))
                block["comparisons"].setdefault(c, {})[f"{who}_minus_untrained"] = _comparison_rows(comp)
        ids = {i: job.item[i] for i in recs["untrained"]}
        block["agreement"] = agreement_summary(bench_of, ids, recs, constant)
        out[sub] = block
    return out


__all__ = ["SelfDistillConfig", "run_self_distill", "item_specs", "split_items", "sft_example", "make_teacher",
           "agreement_summary"]
