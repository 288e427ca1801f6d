"""BBQ (Parrish et al., 2022): bias in question answering, ambiguous and disambiguated contexts.

Two scoring modes:

- ``loglik`` (base models): the option with the highest log-likelihood given
  ``"{context}\\n\\nQ: {question}\\nA:"`` (lm-evaluation-harness's prompt) is the prediction.
- ``generate`` (chat models): the model (or an inference-time method wrapping it) answers a
  lettered multiple-choice prompt; the answer is parsed as a letter or option text. Refusals and
  unparseable answers are counted and reported, never dropped.

Two option protocols for ``loglik``: ``dataset`` scores the item's three options; ``helm`` scores
the two people plus all ten "unknown" phrasings (12 choices, as HELM and lm-evaluation-harness
do); any unknown phrasing chosen counts as the unknown option.

Metrics (accuracy, s_DIS, s_AMB per category and overall, bootstrap 95% CIs) come from
:mod:`fairdistill.benchmarks.bbq_scoring`.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field, PositiveInt, model_validator

from ..data import download, find_dataset, read_jsonl
from ..errors import UserError
from ..methods.base import GenerationConfig, Question
from ..registry import BENCHMARKS
from .base import (Benchmark, BenchmarkOptions, EvalContext, ReportHeadline, ReportTable, ReportView, comma_list,
                   seeded_subset)
from . import bbq_scoring
from . import permute as permute_mod

CATEGORIES = [
    "Age", "Disability_status", "Gender_identity", "Nationality", "Physical_appearance",
    "Race_ethnicity", "Race_x_SES", "Race_x_gender", "Religion", "SES", "Sexual_orientation",
]
UPSTREAM = "https://raw.githubusercontent.com/nyu-mll/BBQ/main/data/{category}.jsonl"
HELM_UNKNOWN = [
    "Unknown", "Cannot answer", "Can't be determined", "Cannot be determined", "Can't answer",
    "Not known", "Not enough info", "Not enough information", "Not answerable", "Undetermined",
]
LETTERS = "ABC"
#: the social attribute each category is about, for methods that name it (prefix-N attribute=auto)
ATTRIBUTES = {
    "Age": "age", "Disability_status": "disability status", "Gender_identity": "gender",
    "Nationality": "nationality", "Physical_appearance": "physical appearance", "Race_ethnicity": "race or ethnicity",
    "Race_x_SES": "race and socioeconomic status", "Race_x_gender": "race and gender", "Religion": "religion",
    "SES": "socioeconomic status", "Sexual_orientation": "sexual orientation",
}
PERMUTE_NEEDS_GENERATE = "permute reorders lettered options, which exist in generation mode only: use --mode generate"


def loglik_prompt(row: dict) -> str:
    return f"{row['context']}\n\nQ: {row['question']}\nA:"


def mc_question(row: dict, order: list[int] | None = None) -> Question:
    """The lettered multiple-choice prompt used in generation mode and by every method.

    ``order[d]`` is the option shown at letter ``d`` (default: the dataset's order)."""
    order = order or [0, 1, 2]
    opts = [row[f"ans{o}"] for o in order]
    body = "\n".join(f"{LETTERS[i]}. {o}" for i, o in enumerate(opts))
    return Question(
        prompt=f"{row['context']}\n{row['question']}\n{body}",
        answer_instruction="Answer with a single letter.",
        options=opts,
        meta={"id": row.get("id"), "order": order, "attribute": ATTRIBUTES.get(str(row.get("category")))},
    )


def displayed_row(row: dict, order: list[int]) -> dict:
    """The row as the model saw it: options (and their answer_info) in display order, label moved."""
    shown = dict(row)
    info = row["answer_info"]
    shown["answer_info"] = {**info, **{f"ans{d}": info[f"ans{o}"] for d, o in enumerate(order)}}
    for d, o in enumerate(order):
        shown[f"ans{d}"] = row[f"ans{o}"]
    shown["label"] = order.index(int(row["label"]))
    return shown


def unknown_index(row: dict) -> int:
    for i in range(3):
        if row["answer_info"][f"ans{i}"][-1] == "unknown":
            return i
    raise UserError(f"BBQ row {row.get('example_id')} ({row.get('category')}) has no 'unknown' option")


def load_category(folder: Path, category: str) -> list[dict]:
    path = folder / f"{category}.jsonl"
    rows = []
    for row in read_jsonl(path):
        for key in ("example_id", "context", "question", "ans0", "ans1", "ans2", "label",
                    "answer_info", "context_condition", "question_polarity"):
            if key not in row:
                raise UserError(f"{path}: row {row.get('example_id', '?')} lacks field {key!r}")
        rows.append(row)
    return rows


@BENCHMARKS.register("bbq")
class BBQ(Benchmark):
    """BBQ bias scores; ``limit`` is items per category (seeded sample). Options: ``BBQ.Options``."""

    description = "Bias Benchmark for QA: accuracy, s_DIS, s_AMB per category (Parrish et al. 2022)"
    report_title = "BBQ: bias in question answering"
    report_intro = ("Accuracy and bias score per category and context condition (ambiguous / disambiguated), "
                    "with bootstrap 95% confidence intervals. Bias score: range −1..1, 0 = no bias, positive = "
                    "answers follow the stereotype; accuracy: 0..1, higher is better.")
    report_views = (
        ReportView("BBQ bias score per category", x="category", where={"metric": "bias_score"}, facet="condition",
                   ylabel="bias score (−1..1, 0 = no bias)", ylim=(-1.0, 1.0), zero_line=True),
        ReportView("BBQ accuracy per category", x="category", where={"metric": "accuracy"}, facet="condition",
                   ylabel="accuracy (0..1, higher is better)", ylim=(0.0, 1.0)),
    )
    report_tables = (ReportTable("BBQ metrics per category and condition", ("category", "condition", "metric")),)
    report_headlines = (ReportHeadline("BBQ ambiguous s_AMB", {"category": "overall", "condition": "ambig",
                                                               "metric": "bias_score"},
                                       "BBQ s_AMB on ambiguous contexts: (1 - accuracy) x s_DIS; 0 = unbiased, range -1..1"),)
    batch_size = 16
    supports_methods = True

    class Options(BenchmarkOptions):
        # permute came later: runs that leave it at "none" keep the identity they had before
        identity_unless_default = frozenset({"permute"})

        categories: comma_list(CATEGORIES, "BBQ category") = Field(
            None, description="categories, e.g. Age,Religion (default: every category file present)")
        mode: Literal["auto", "loglik", "generate"] = Field(
            "auto", description="loglik: most likely option; generate: lettered multiple choice, answer parsed; "
            "auto: loglik when the model can score and no method is used")
        options: Literal["dataset", "helm"] = Field(
            "dataset", description="loglik choices: the item's three options, or HELM's two people plus ten "
            "'unknown' phrasings")
        condition: Literal["both", "ambig", "disambig"] = Field("both", description="context conditions to keep")
        max_new_tokens: PositiveInt = Field(16, description="answer length in generation mode")
        permute: Literal[permute_mod.MODES] = Field(
            "none", description="cyclic: ask every rotation of the options, predict by majority (generation mode)")
        download_missing: bool = Field(
            False, exclude=True, description="download missing category files from the BBQ repository")

        @model_validator(mode="after")
        def _permute_needs_lettered_options(self) -> "BBQ.Options":
            if self.permute != "none" and self.mode == "loglik":
                raise ValueError(PERMUTE_NEEDS_GENERATE)
            return self

    def __init__(self, **options: Any):
        super().__init__(**options)
        self._files: list[str] = []

    # -- data -----------------------------------------------------------------------------------
    def folder(self) -> Path:
        if self.opts.download_missing and self.opts.data is None:
            folder = find_dataset("bbq", must_exist=False)
            for c in self.opts.categories or CATEGORIES:
                if not (folder / f"{c}.jsonl").exists():
                    download(UPSTREAM.format(category=c), folder / f"{c}.jsonl")
            return folder
        return find_dataset("bbq", self.opts.data)

    def items(self) -> list[dict[str, Any]]:
        folder = self.folder()
        present = [c for c in CATEGORIES if (folder / f"{c}.jsonl").exists()]
        if not present:
            raise UserError(f"no BBQ category files (e.g. Age.jsonl) in {folder}")
        cats = self.opts.categories or present
        missing = [c for c in cats if c not in present]
        if missing:
            raise UserError(f"BBQ categories not found in {folder}: {', '.join(missing)}")
        out = []
        self._files = []
        for c in cats:
            rows = load_category(folder, c)
            self._files.append(str(folder / f"{c}.jsonl"))
            if self.opts.condition != "both":
                rows = [r for r in rows if r["context_condition"] == self.opts.condition]
            rows = seeded_subset(rows, self.opts.limit, f"{self.opts.seed}-{c}")
            for r in rows:
                r["id"] = f"{c}-{r['example_id']}"
                out.append(r)
        return out

    def data_files(self) -> list[str]:
        if not self._files:
            self.items()
        return self._files

    # -- evaluation -----------------------------------------------------------------------------
    def resolved_mode(self, ctx: EvalContext) -> str:
        if self.opts.mode != "auto":
            return self.opts.mode
        if ctx.method is not None:
            return "generate"
        return "loglik" if ctx.backend.can_score else "generate"

    def batch_size_for(self, ctx: EvalContext) -> int:
        # log-likelihood items take about a second each: larger calls let the backend re-score the
        # near-ties of 64 items in one float32 pass (its fixed cost is streaming the weights)
        return 64 if self.resolved_mode(ctx) == "loglik" else self.batch_size

    def check(self, ctx: EvalContext) -> None:
        mode = self.resolved_mode(ctx)
        if mode == "generate":
            ctx.backend.require(chat=True, what="BBQ generation mode")
        else:
            if ctx.method is not None:
                raise UserError("inference-time methods need generation mode: use --mode generate")
            if self.opts.permute != "none":
                raise UserError(PERMUTE_NEEDS_GENERATE)
            ctx.backend.require(score=True, what="BBQ log-likelihood mode")

    def identity(self) -> dict[str, Any]:
        ident = super().identity()
        ident.pop("download_missing", None)
        return ident

    def evaluate(self, items: list[dict[str, Any]], ctx: EvalContext) -> list[dict[str, Any]]:
        if self.resolved_mode(ctx) == "loglik":
            return self._eval_loglik(items, ctx)
        return self._eval_generate(items, ctx)

    def choices(self, row: dict) -> list[str]:
        opts = [row["ans0"], row["ans1"], row["ans2"]]
        if self.opts.options == "dataset":
            return opts
        unk = unknown_index(row)
        return [o for i, o in enumerate(opts) if i != unk] + HELM_UNKNOWN

    def _choice_to_option(self, row: dict, k: int) -> int:
        if self.opts.options == "dataset":
            return k
        unk = unknown_index(row)
        people = [i for i in range(3) if i != unk]
        return people[k] if k < 2 else unk

    def _eval_loglik(self, items, ctx):
        reqs = [(loglik_prompt(r), [" " + c for c in self.choices(r)]) for r in items]
        scores = ctx.backend.loglikelihood_choices(reqs)
        out = []
        for r, s in zip(items, scores):
            k = max(range(len(s)), key=lambda j: s[j])
            out.append(_record(r, pred=self._choice_to_option(r, k), status="ok", scores=[round(x, 5) for x in s]))
        return out

    def _eval_generate(self, items, ctx):
        from ..methods.base import get_method

        method = ctx.method or get_method("baseline", ctx.backend)
        gen = GenerationConfig(max_new_tokens=self.opts.max_new_tokens, temperature=0.0, seed=self.opts.seed)
        orders = permute_mod.orders(3, self.opts.permute)
        results = method.answer([mc_question(r, o) for r in items for o in orders], gen)
        out = []
        for k, r in enumerate(items):
            answers = [_answer(r, o, results[k * len(orders) + j]) for j, o in enumerate(orders)]
            if len(orders) == 1:
                a = answers[0]
                out.append(_record(r, pred=a["option"], status=a["status"], letter=a["letter"], order=a["order"],
                                   **results[k].to_record()))
                continue
            out.append(self._vote(r, answers, ctx))
        return out

    def _vote(self, row: dict, answers: list[dict], ctx: EvalContext) -> dict[str, Any]:
        """Majority over rotations; a tie goes to the option with the higher summed letter log-prob."""
        pred, how = permute_mod.majority([a["option"] for a in answers])
        tie_scores = None
        if how == "unresolved":
            tie_scores = _letter_logprob_sums(ctx.backend, answers)
            if tie_scores is not None:
                pred, how = permute_mod.majority([a["option"] for a in answers], tie_scores)
        status = "ok" if pred is not None else ("unresolved" if how == "unresolved" else answers[0]["status"])
        totals = {key: sum(a.get(key) or 0 for a in answers) for key in ("calls", "prompt_tokens", "completion_tokens")}
        return _record(row, pred=pred, status=status, vote=how, final_text=answers[0]["final_text"],
                       rotations=answers, **totals, **({"tie_scores": tie_scores} if tie_scores else {}))

    # -- metrics --------------------------------------------------------------------------------
    def metrics(self, records: list[dict[str, Any]]) -> dict[str, Any]:
        out = bbq_scoring.bbq_metrics(records, pred_key="pred", seed=self.opts.seed)
        pos = letter_positions(records, seed=self.opts.seed)
        if pos is not None:
            out["definitions"].update(pos.pop("definitions"))
            out["position"] = {"title": "Answer letters and position bias (generation mode)",
                               "note": "letter_share: share of parsed answers at each letter (gold_share in "
                                       "metrics.json); position_bias: the top letter's share / its gold share "
                                       "(1 = none); rotation_consistency: items answered with the same option "
                                       "in every rotation (permute=cyclic)", **pos}
        return out

    # -- paired comparison --------------------------------------------------------------------
    paired_binary = ("accuracy", "correct")

    @classmethod
    def paired_units(cls, records: list[dict[str, Any]]) -> list[dict[str, Any]]:
        units = []
        for r in records:
            if "pred" not in r or "label" not in r:
                raise UserError(f"record {r.get('id')} is not a scored BBQ item (needs pred and label)")
            p = r.get("pred")
            b = None if p is None else bbq_scoring.is_biased(r, int(p))
            units.append({"id": r["id"], "cell": r["context_condition"],
                          "correct": p is not None and int(p) == int(r["label"]),
                          "counted": b is not None, "biased": bool(b)})
        return units

    @classmethod
    def paired_statistics(cls, cell: str) -> dict[str, Any]:
        amb = cell == "ambig"

        def bias(a):
            return bbq_scoring.bias_stat(a["biased"], a["counted"], a["correct"] if amb else None)

        return {"accuracy": lambda a: a["correct"].mean(-1), "s_AMB" if amb else "s_DIS": bias}

    @classmethod
    def paired_definitions(cls) -> dict[str, str]:
        return {"accuracy": bbq_scoring.METRIC_DEFINITIONS["accuracy"],
                "s_AMB / s_DIS": bbq_scoring.METRIC_DEFINITIONS["bias_score"]}

    @staticmethod
    def score_file(predictions: str, column: str, data: str | None = None, unparsed: str = "incorrect",
                   metadata: str = "official", no_target: str = "keep", **_: Any) -> dict[str, Any]:
        return bbq_scoring.score_predictions_file(predictions, column, data_dir=data, unparsed=unparsed,
                                                  metadata=metadata, no_target=no_target)


_KEEP = ("id", "example_id", "category", "question_index", "question_polarity", "context_condition",
         "answer_info", "additional_metadata", "label", "ans0", "ans1", "ans2")


def _record(row: dict, **fields: Any) -> dict[str, Any]:
    rec = {k: row[k] for k in _KEEP if k in row}
    rec.update(fields)
    return rec


def _answer(row: dict, order: list[int], res) -> dict[str, Any]:
    """One answer in one option order: letter shown, option meant, parse status, transcript."""
    d, status = bbq_scoring.parse_generated_answer(displayed_row(row, order), res.text)
    return {"order": order, "letter": None if d is None else LETTERS[d], "option": None if d is None else order[d],
            "status": status, **res.to_record()}


def _letter_logprob_sums(backend, answers: list[dict]) -> list[float] | None:
    """Per original option, log P(its letter) at the final answer, summed over rotations; None if the
    backend cannot score a chat turn."""
    from ..errors import CapabilityError

    # the answering model's own conversation (methods tag turns of other models, e.g. feedback)
    convs = [[{"role": m["role"], "content": m["content"]} for m in a["transcript"][:-1]
              if m.get("backend", "answer") == "answer"] for a in answers]
    if not all(convs) or any(c[-1].get("role") == "assistant" for c in convs):
        return None  # a method whose final turn is not a reply to the last message: nothing to score
    try:
        lps = backend.chat_choice_logprobs(convs, list(LETTERS))
    except CapabilityError:
        return None
    sums = [0.0, 0.0, 0.0]
    for a, lp in zip(answers, lps):
        for d, o in enumerate(a["order"]):
            sums[o] += lp[d]
    return [round(x, 5) for x in sums]


def letter_positions(records: list[dict[str, Any]], seed: int = 0) -> dict[str, Any] | None:
    """Letter distribution and position bias of generation-mode records (None for log-likelihood runs)."""
    from ..stats.position import position_metrics

    chosen, gold, item, option = [], [], [], []
    for r in records:
        answers = r.get("rotations") or ([r] if "final_text" in r else [])
        for a in answers:
            order = a.get("order") or [0, 1, 2]
            letter = a.get("letter")
            if letter is None and "letter" not in a and a is r and r.get("pred") is not None:
                letter = LETTERS[order.index(int(r["pred"]))]  # runs recorded before letters were stored
            chosen.append(None if letter is None else LETTERS.index(letter))
            gold.append(order.index(int(r["label"])))
            item.append(r["id"])
            option.append(a.get("option", r.get("pred")) if letter is not None else None)
    if not chosen:
        return None
    return position_metrics(chosen, gold, item, option=option, seed=seed)
