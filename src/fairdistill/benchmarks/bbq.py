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
from typing import Any

from ..data import download, find_dataset, read_jsonl
from ..errors import UserError
from ..methods.base import GenerationConfig, Question
from ..registry import BENCHMARKS
from .base import Benchmark, EvalContext, option_list, seeded_subset
from . import bbq_scoring

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


def loglik_prompt(row: dict) -> str:
    return f"{row['context']}\n\nQ: {row['question']}\nA:"


def mc_question(row: dict) -> Question:
    """The lettered multiple-choice prompt used in generation mode and by every method."""
    opts = [row["ans0"], row["ans1"], row["ans2"]]
    body = "\n".join(f"{LETTERS[i]}. {o}" for i, o in enumerate(opts))
    return Question(
        prompt=f"{row['context']}\n{row['question']}\n{body}",
        answer_instruction="Answer with a single letter.",
        options=opts,
        meta={"id": row.get("id")},
    )


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
    """BBQ bias scores. Options: categories, mode (auto|loglik|generate), options (dataset|helm),
    condition (both|ambig|disambig), limit (items per category, seeded sample), max_new_tokens."""

    name = "bbq"
    description = "Bias Benchmark for QA: accuracy, s_DIS, s_AMB per category (Parrish et al. 2022)"
    batch_size = 16
    supports_methods = True

    def __init__(
        self,
        data: str | None = None,
        limit: int | None = None,
        seed: int = 0,
        categories: list[str] | str | None = None,
        mode: str = "auto",
        options: str = "dataset",
        condition: str = "both",
        max_new_tokens: int = 16,
        download_missing: bool = False,
    ):
        categories = option_list(categories)
        if mode not in ("auto", "loglik", "generate"):
            raise UserError(f"unknown BBQ mode {mode!r}; use auto, loglik or generate")
        if options not in ("dataset", "helm"):
            raise UserError(f"unknown BBQ options protocol {options!r}; use dataset or helm")
        if condition not in ("both", "ambig", "disambig"):
            raise UserError(f"unknown BBQ condition {condition!r}; use both, ambig or disambig")
        for c in categories or []:
            if c not in CATEGORIES:
                raise UserError(f"unknown BBQ category {c!r}; known: {', '.join(CATEGORIES)}")
        super().__init__(data=data, limit=limit, seed=seed, categories=categories, mode=mode,
                         options=options, condition=condition, max_new_tokens=max_new_tokens)
        self.categories = categories
        self.mode = mode
        self.protocol = options
        self.condition = condition
        self.max_new_tokens = max_new_tokens
        self.download_missing = download_missing
        self._files: list[str] = []

    # -- data -----------------------------------------------------------------------------------
    def folder(self) -> Path:
        if self.download_missing and self.data is None:
            folder = find_dataset("bbq", must_exist=False)
            for c in self.categories or CATEGORIES:
                if not (folder / f"{c}.jsonl").exists():
                    download(UPSTREAM.format(category=c), folder / f"{c}.jsonl")
            return folder
        return find_dataset("bbq", self.data)

    def items(self) -> list[dict[str, Any]]:
        folder = self.folder()
        present = [c for c in CATEGORIES if (folder / f"{c}.jsonl").exists()]
        if not present:
            raise UserError(f"no BBQ category files (e.g. Age.jsonl) in {folder}")
        cats = self.categories or present
        missing = [c for c in cats if c not in present]
        if missing:
            raise UserError(f"BBQ categories not found in {folder}: {', '.join(missing)}")
        out = []
        self._files = []
        for c in cats:
            rows = load_category(folder, c)
            self._files.append(str(folder / f"{c}.jsonl"))
            if self.condition != "both":
                rows = [r for r in rows if r["context_condition"] == self.condition]
            rows = seeded_subset(rows, self.limit, f"{self.seed}-{c}")
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
        if self.mode != "auto":
            return self.mode
        if ctx.method is not None:
            return "generate"
        return "loglik" if ctx.backend.can_score else "generate"

    def check(self, ctx: EvalContext) -> None:
        mode = self.resolved_mode(ctx)
        if mode == "generate":
            ctx.backend.require(chat=True, what="BBQ generation mode")
        else:
            if ctx.method is not None:
                raise UserError("inference-time methods need generation mode: use --mode generate")
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
        if self.protocol == "dataset":
            return opts
        unk = unknown_index(row)
        return [o for i, o in enumerate(opts) if i != unk] + HELM_UNKNOWN

    def _choice_to_option(self, row: dict, k: int) -> int:
        if self.protocol == "dataset":
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
        gen = GenerationConfig(max_new_tokens=self.max_new_tokens, temperature=0.0, seed=self.seed)
        results = method.answer([mc_question(r) for r in items], gen)
        out = []
        for r, res in zip(items, results):
            pred, status = bbq_scoring.parse_generated_answer(r, res.text)
            out.append(_record(r, pred=pred, status=status, **res.to_record()))
        return out

    # -- metrics --------------------------------------------------------------------------------
    def metrics(self, records: list[dict[str, Any]]) -> dict[str, Any]:
        return bbq_scoring.bbq_metrics(records, pred_key="pred", seed=self.seed)

    @staticmethod
    def score_file(predictions: str, column: str, data: str | None = None, **_: Any) -> dict[str, Any]:
        return bbq_scoring.score_predictions_file(predictions, column, data_dir=data)


_KEEP = ("id", "example_id", "category", "question_index", "question_polarity", "context_condition",
         "answer_info", "additional_metadata", "label", "ans0", "ans1", "ans2")


def _record(row: dict, **fields: Any) -> dict[str, Any]:
    rec = {k: row[k] for k in _KEEP if k in row}
    rec.update(fields)
    return rec
