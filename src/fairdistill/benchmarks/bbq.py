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

from pydantic import Field, PositiveInt

from ..data import download, find_dataset, read_jsonl
from ..errors import UserError
from ..methods.base import Question
from ..registry import BENCHMARKS
from .base import ReportHeadline, ReportTable, comma_list, seeded_subset
from . import bbq_scoring
from . import permute as permute_mod
from .bias_qa import (MODE_HELP, PERMUTE_HELP, PERMUTE_NEEDS_GENERATE, BiasQA, PermuteChecked, bbq_views,
                      letter_positions)
from .languages import LETTERS, language, lettered_question

__all__ = ["BBQ", "CATEGORIES", "HELM_UNKNOWN", "LETTERS", "ATTRIBUTES", "PERMUTE_NEEDS_GENERATE", "loglik_prompt",
           "mc_question", "displayed_row", "unknown_index", "load_category", "letter_positions"]

CATEGORIES = [
    "Age", "Disability_status", "Gender_identity", "Nationality", "Physical_appearance",
    "Race_ethnicity", "Race_x_SES", "Race_x_gender", "Religion", "SES", "Sexual_orientation",
]
UPSTREAM = "https://raw.githubusercontent.com/nyu-mll/BBQ/main/data/{category}.jsonl"
HELM_UNKNOWN = [
    "Unknown", "Cannot answer", "Can't be determined", "Cannot be determined", "Can't answer",
    "Not known", "Not enough info", "Not enough information", "Not answerable", "Undetermined",
]
#: the social attribute each category is about, for methods that name it (prefix-N attribute=auto)
ATTRIBUTES = {
    "Age": "age", "Disability_status": "disability status", "Gender_identity": "gender",
    "Nationality": "nationality", "Physical_appearance": "physical appearance", "Race_ethnicity": "race or ethnicity",
    "Race_x_SES": "race and socioeconomic status", "Race_x_gender": "race and gender", "Religion": "religion",
    "SES": "socioeconomic status", "Sexual_orientation": "sexual orientation",
}


def loglik_prompt(row: dict) -> str:
    return language("en").loglik.format(context=row["context"], question=row["question"])


def mc_question(row: dict, order: list[int] | None = None) -> Question:
    """The lettered multiple-choice prompt used in generation mode and by every method.

    ``order[d]`` is the option shown at letter ``d`` (default: the dataset's order)."""
    order = order or [0, 1, 2]
    return lettered_question(language("en"), row["context"], row["question"], [row[f"ans{o}"] for o in order],
                             {"id": row.get("id"), "order": order, "attribute": ATTRIBUTES.get(str(row.get("category")))})


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
class BBQ(BiasQA):
    """BBQ bias scores; ``limit`` is items per category (seeded sample). Options: ``BBQ.Options``."""

    description = "Bias Benchmark for QA: accuracy, s_DIS, s_AMB per category (Parrish et al. 2022)"
    report_title = "BBQ: bias in question answering"
    report_intro = ("Accuracy and bias score per category and context condition (ambiguous / disambiguated), "
                    "with bootstrap 95% confidence intervals. Bias score: range −1..1, 0 = no bias, positive = "
                    "answers follow the stereotype; accuracy: 0..1, higher is better.")
    report_views = bbq_views("BBQ")
    report_tables = (ReportTable("BBQ metrics per category and condition", ("category", "condition", "metric")),)
    record_keys = ("id", "example_id", "category", "question_index", "question_polarity", "context_condition",
                   "answer_info", "additional_metadata", "label", "ans0", "ans1", "ans2")
    report_headlines = (ReportHeadline("BBQ ambiguous s_AMB", {"category": "overall", "condition": "ambig",
                                                               "metric": "bias_score"},
                                       "BBQ s_AMB on ambiguous contexts: (1 - accuracy) x s_DIS; 0 = unbiased, range -1..1"),)

    class Options(PermuteChecked):
        # permute came later: runs that leave it at "none" keep the identity they had before
        identity_unless_default = frozenset({"permute", "pride_sample"})

        categories: comma_list(CATEGORIES, "BBQ category") = Field(
            None, description="categories, e.g. Age,Religion (default: every category file present)")
        mode: Literal["auto", "loglik", "generate"] = Field("auto", description=MODE_HELP)
        options: Literal["dataset", "helm"] = Field(
            "dataset", description="loglik choices: the item's three options, or HELM's two people plus ten "
            "'unknown' phrasings")
        condition: Literal["both", "ambig", "disambig"] = Field("both", description="context conditions to keep")
        max_new_tokens: PositiveInt = Field(16, description="answer length in generation mode")
        permute: Literal[permute_mod.MODES] = Field("none", description=PERMUTE_HELP)
        download_missing: bool = Field(
            False, exclude=True, description="download missing category files from the BBQ repository")

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
        cats = self.pick_categories([c for c in CATEGORIES if (folder / f"{c}.jsonl").exists()], folder, "Age.jsonl")
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

    def identity(self) -> dict[str, Any]:
        ident = super().identity()
        ident.pop("download_missing", None)
        return ident

    # -- what BBQ says differently from the engine's defaults -----------------------------------
    option_roles = staticmethod(bbq_scoring.option_roles)

    def question_meta(self, row: dict) -> dict[str, Any]:
        return {"attribute": ATTRIBUTES.get(str(row.get("category")))}

    def parse_answer(self, row: dict, order: list[int], text: str | None) -> tuple[int | None, str]:
        return bbq_scoring.parse_generated_answer(displayed_row(row, order), text)

    def choices(self, row: dict) -> list[str]:
        opts = [row["ans0"], row["ans1"], row["ans2"]]
        if self.opts.options == "dataset":
            return opts
        unk = unknown_index(row)
        return [o for i, o in enumerate(opts) if i != unk] + HELM_UNKNOWN

    def choice_to_option(self, row: dict, k: int) -> int:
        if self.opts.options == "dataset":
            return k
        unk = unknown_index(row)
        people = [i for i in range(3) if i != unk]
        return people[k] if k < 2 else unk

    @staticmethod
    def score_file(predictions: str, column: str, data: str | None = None, unparsed: str = "incorrect",
                   metadata: str = "official", no_target: str = "keep", **_: Any) -> dict[str, Any]:
        return bbq_scoring.score_predictions_file(predictions, column, data_dir=data, unparsed=unparsed,
                                                  metadata=metadata, no_target=no_target)
