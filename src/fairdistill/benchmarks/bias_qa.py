"""The engine of the BBQ-style benchmarks (BBQ, CBBQ, KoBBQ): lettered multiple choice about two people.

An item is a dict with ``id``, ``category``, ``context``, ``question``, three options ``ans0..ans2``,
``label`` (the correct option), ``context_condition`` (``ambig`` / ``disambig``) and
``question_polarity`` (``neg`` / ``nonneg``). Each option has a *role*: ``unknown``, ``target`` (the
person of the stereotyped group) or ``nontarget``; a biased answer is the target for a negative
question and the other person for a non-negative one (:func:`bbq_scoring.biased_from_roles`).

What the engine does for every such benchmark:

- ``loglik`` mode: the option with the highest log-likelihood after the language's prompt;
- ``generate`` mode (and every inference-time method): a lettered question in the benchmark's language
  (``languages.yaml``), the answer parsed as a letter or an option's text; ``permute=cyclic`` asks every
  rotation of the options and predicts by majority (ties: summed letter log-probabilities);
- metrics: BBQ's accuracy, s_DIS and s_AMB per category and condition with bootstrap CIs
  (:func:`bbq_scoring.bbq_metrics`), the answer-letter statistics of generation mode, and the
  dataset's own published metrics (:meth:`BiasQA.native_metrics`);
- paired comparison of two runs item by item (``--compare``).

A benchmark on the engine (``bbq.py``, ``cbbq.py``, ``kobbq.py``) loads its rows into that shape
and says what differs: its language, how roles are found, how answers are read, what it keeps per record.
"""
from __future__ import annotations

from typing import Any, Callable, ClassVar, Literal, Sequence

import numpy as np

from pydantic import Field, PositiveInt, model_validator

from ..errors import CapabilityError, UserError
from ..stats.bootstrap import percentile_interval, summed_statistic
from ..stats.position import attach
from ..methods.base import GenerationConfig, Question
from . import bbq_scoring
from . import permute as permute_mod
from .base import Benchmark, BenchmarkOptions, EvalContext, ReportView
from .languages import LETTERS, Language, language, lettered_question, parse_choice

PERMUTE_NEEDS_GENERATE = "permute reorders lettered options, which exist in generation mode only: use --mode generate"
MODE_HELP = ("loglik: most likely option; generate: lettered multiple choice, answer parsed; "
             "auto: loglik when the model can score and no method is used")
PERMUTE_HELP = ("cyclic: ask every rotation of the options, predict by majority; pride: one call per item, the letter "
                "prior (estimated on a sample asked in every rotation) divided out (generation mode)")


def bbq_views(prefix: str) -> tuple[ReportView, ReportView]:
    """The report charts of BBQ's bias score and accuracy per category, one chart per condition."""
    return (
        ReportView(f"{prefix} bias score per category", x="category", where={"metric": "bias_score"}, facet="condition",
                   ylabel="bias score (−1..1, 0 = no bias)", ylim=(-1.0, 1.0), zero_line=True),
        ReportView(f"{prefix} accuracy per category", x="category", where={"metric": "accuracy"}, facet="condition",
                   ylabel="accuracy (0..1, higher is better)", ylim=(0.0, 1.0)),
    )


class PermuteChecked(BenchmarkOptions):
    """Options of a lettered benchmark: ``permute`` needs generation mode (a one-line error otherwise)."""

    # pride_sample came later: runs that leave it at its default keep the identity they had before
    identity_unless_default: ClassVar[frozenset[str]] = frozenset({"pride_sample"})
    pride_sample: float = Field(0.05, gt=0, le=1, description="permute=pride: share of the items (at least 10) "
                                "asked in every rotation to estimate the model's prior over option letters")

    @model_validator(mode="after")
    def _permute_needs_lettered_options(self) -> "PermuteChecked":
        if getattr(self, "permute", "none") != "none" and getattr(self, "mode", None) == "loglik":
            raise ValueError(PERMUTE_NEEDS_GENERATE)
        return self


class LetteredOptions(PermuteChecked):
    """The options every benchmark on the engine takes besides its categories (BBQ declares its own,
    in the order its pinned run identity has)."""

    mode: Literal["auto", "loglik", "generate"] = Field("auto", description=MODE_HELP)
    condition: Literal["both", "ambig", "disambig"] = Field("both", description="context conditions to keep")
    max_new_tokens: PositiveInt = Field(16, description="answer length in generation mode")
    permute: Literal[permute_mod.MODES] = Field("none", description=PERMUTE_HELP)


class BiasQA(Benchmark):
    """Base class of the BBQ-style benchmarks; subclasses implement ``items`` (rows in the shape of the
    module docstring) and the hooks below."""

    #: the language of the questions (``languages.yaml``); methods are told it (Question.meta["language"])
    lang_code: ClassVar[str] = "en"
    #: this benchmark's category -> the BBQ category it measures (report "Across languages"; None = the
    #: identity, for BBQ itself); categories without a BBQ counterpart are left out of that comparison
    bbq_categories: ClassVar[dict[str, str] | None] = None
    #: how the benchmark is named in messages ("BBQ generation mode")
    title: ClassVar[str] = "BBQ"
    #: the row fields each stored record keeps
    record_keys: ClassVar[tuple[str, ...]] = ("id", "category", "context_condition", "question_polarity", "label",
                                              "ans0", "ans1", "ans2", "roles")
    batch_size = 16          # items per call (and per save) when a method answers
    plain_batch_size = 64    # items per call for the plain model (log-likelihood or one generated turn)
    supports_methods = True
    paired_binary = ("accuracy", "correct")

    #: each category's social attribute: (in English, in the benchmark's language), for prefix-N attribute=auto
    attributes: ClassVar[dict[str, tuple[str, str]]] = {}

    def __init__(self, **options: Any):
        super().__init__(**options)
        self._files: list[str] = []  # the data files items() read (run config hashes them)

    @property
    def lang(self) -> Language:
        return language(self.lang_code)

    def data_files(self) -> list[str]:
        if not self._files:
            self.items()
        return self._files

    def pick_categories(self, present: list[str], folder: Any, example: str) -> list[str]:
        """The requested categories (default: those with data); a one-line error for none or missing data."""
        if not present:
            raise UserError(f"no {self.title} category files (e.g. {example}) in {folder}")
        missing = [c for c in self.opts.categories or [] if c not in present]
        if missing:
            raise UserError(f"{self.title} categories not found in {folder}: {', '.join(missing)}")
        return self.opts.categories or present

    # -- hooks ---------------------------------------------------------------------------------
    @classmethod
    def option_roles(cls, row: dict) -> list[str]:
        """The role of each option ("unknown", "target", "nontarget"); default: the row's ``roles``."""
        return list(row["roles"])

    def option_texts(self, row: dict) -> list[str]:
        return [str(row[f"ans{i}"]) for i in range(3)]

    def question_meta(self, row: dict) -> dict[str, Any]:
        """Extra Question.meta for methods: the category's ``attribute`` in English and ``attribute_native``."""
        en, native = self.attributes.get(str(row.get("category")), (None, None))
        return {"attribute": en, "attribute_native": native}

    @staticmethod
    def row_to_item(where: str, row: dict[str, Any]) -> dict[str, Any]:
        """One of the dataset's own rows as an item (``score_file``); ``where`` names it in errors."""
        raise NotImplementedError

    @classmethod
    def score_file(cls, predictions: str, column: str, data: str | None = None, **_: Any) -> dict[str, Any]:
        """Metrics of the dataset's own rows plus an answer column (``fairdistill score NAME``)."""
        return score_rows_file(cls(data=data), predictions, column, cls.row_to_item)

    def question(self, row: dict, order: list[int] | None = None) -> Question:
        """The lettered question, option ``order[d]`` shown at letter ``d`` (default: the dataset's order)."""
        order = order or [0, 1, 2]
        texts = self.option_texts(row)
        return lettered_question(self.lang, row["context"], row["question"], [texts[o] for o in order],
                                 {"id": row.get("id"), "order": order, **self.question_meta(row)})

    def template_key(self, item: dict[str, Any]) -> Any:
        """Items of one question template (held out together in self-distillation)."""
        return (item["category"], item.get("question_index"))

    def answer_role(self, item: dict[str, Any], option: int) -> str | None:
        roles = self.option_roles(item)
        if roles[option] == "unknown":
            return "unknown"
        b = bbq_scoring.biased_from_roles(roles, item.get("question_polarity"), option)
        return None if b is None else ("biased" if b else "anti-biased")

    def parse_answer(self, row: dict, order: list[int], text: str | None) -> tuple[int | None, str]:
        """``(display index or None, status)`` of an answer to the question in ``order``."""
        texts, roles = self.option_texts(row), self.option_roles(row)
        u = order.index(roles.index("unknown")) if "unknown" in roles else None
        return parse_choice([texts[o] for o in order], u, text, self.lang)

    def loglik_prompt(self, row: dict) -> str:
        return self.lang.loglik.format(context=row["context"], question=row["question"])

    def choices(self, row: dict) -> list[str]:
        """The continuations scored in loglik mode (default: the three options)."""
        return self.option_texts(row)

    def choice_to_option(self, row: dict, k: int) -> int:
        return k

    def native_metrics(self, records: list[dict[str, Any]]) -> dict[str, Any] | None:
        """The dataset's own published metrics: ``{"rows": [...], "definitions": {...}}`` or None."""
        return None

    # -- evaluation -----------------------------------------------------------------------------
    def resolved_mode(self, ctx: EvalContext) -> str:
        if self.opts.mode != "auto":
            return self.opts.mode
        if ctx.method is not None:
            return "generate"
        return "loglik" if ctx.backend.can_score else "generate"

    def batch_size_for(self, ctx: EvalContext) -> int:
        # plain answers (log-likelihood, or one short generated turn) take about a second each: larger
        # calls let the backend decide the near-ties of 64 items in one float32 pass (its fixed cost is
        # streaming the weights); a method's items take far longer, and are saved 16 at a time
        return self.plain_batch_size if self.resolved_mode(ctx) == "loglik" or ctx.method is None else self.batch_size

    def check(self, ctx: EvalContext) -> None:
        mode = self.resolved_mode(ctx)
        if mode == "generate":
            ctx.backend.require(chat=True, what=f"{self.title} generation mode")
            if ctx.method is not None and hasattr(ctx.method, "use_language"):
                ctx.method.use_language(self.lang_code)
        else:
            if ctx.method is not None:
                raise UserError("inference-time methods need generation mode: use --mode generate")
            if self.opts.permute != "none":
                raise UserError(PERMUTE_NEEDS_GENERATE)
            ctx.backend.require(score=True, what=f"{self.title} log-likelihood mode")

    def check_method_options(self, method: str | None, options: dict[str, Any]) -> None:
        from ..registry import METHODS

        # a method given as an object in code is not registered: it is told the language when it runs
        if method and method in METHODS.names():
            err = METHODS.get(method).language_error(options, self.lang_code)
            if err:
                raise UserError(err)

    def evaluate(self, items: list[dict[str, Any]], ctx: EvalContext) -> list[dict[str, Any]]:
        if self.resolved_mode(ctx) == "loglik":
            return self._eval_loglik(items, ctx)
        return self._eval_generate(items, ctx)

    def record(self, row: dict, **fields: Any) -> dict[str, Any]:
        rec = {k: row[k] for k in self.record_keys if k in row}
        rec.update(fields)
        return rec

    def _eval_loglik(self, items, ctx):
        space = self.lang.loglik_space
        reqs = [(self.loglik_prompt(r), [space + c for c in self.choices(r)]) for r in items]
        scores = ctx.backend.loglikelihood_choices(reqs)
        out = []
        for r, s in zip(items, scores):
            k = max(range(len(s)), key=lambda j: s[j])
            out.append(self.record(r, pred=self.choice_to_option(r, k), status="ok", scores=[round(x, 5) for x in s]))
        return out

    def _eval_generate(self, items, ctx):
        from ..methods.base import get_method

        if self.opts.permute == "pride":
            return self._eval_pride(items, ctx)
        method = ctx.method or get_method("baseline", ctx.backend)
        gen = GenerationConfig(max_new_tokens=self.opts.max_new_tokens, temperature=0.0, seed=self.opts.seed)
        orders = permute_mod.orders(3, self.opts.permute)
        results = method.answer([self.question(r, o) for r in items for o in orders], gen)
        out = []
        for k, r in enumerate(items):
            answers = [self._answer(r, o, results[k * len(orders) + j]) for j, o in enumerate(orders)]
            if len(orders) == 1:
                a = answers[0]
                out.append(self.record(r, pred=a["option"], status=a["status"], letter=a["letter"], order=a["order"],
                                       **results[k].to_record()))
                continue
            out.append(self._vote(r, answers, ctx))
        return out

    # -- PriDe: position control at one call per item -----------------------------------------------
    def _letter_logprobs(self, ctx: EvalContext, rows_orders: list[tuple[dict, list[int]]]) -> list[list[float]]:
        from ..methods.base import user_turn

        convs = [[{"role": "user", "content": user_turn(self.question(r, o))}] for r, o in rows_orders]
        return ctx.backend.chat_choice_logprobs(convs, list(LETTERS))

    def pride_prior(self, ctx: EvalContext) -> dict[str, Any]:
        """The letter prior from the run's seeded sample of items, each asked in every rotation (computed once per
        session; deterministic, so a resumed run uses the same prior)."""
        if getattr(self, "_pride", None) is None:
            all_items = {it["id"]: it for it in self.load_items()}
            sample = permute_mod.pride_sample(list(all_items), self.opts.pride_sample, 10, self.opts.seed)
            rots = permute_mod.orders(3, "cyclic")
            lps = self._letter_logprobs(ctx, [(all_items[i], o) for i in sample for o in rots])
            per_item = [lps[k * 3:(k + 1) * 3] for k in range(len(sample))]
            self._pride = {"prior": [round(x, 6) for x in permute_mod.pride_prior(per_item)], "sample": sample,
                           "calls": 3 * len(sample)}
        return self._pride

    def _eval_pride(self, items, ctx):
        if ctx.method is not None:
            raise UserError("permute=pride runs the plain model (it reads the letter probabilities of one answer "
                            "turn); use permute=cyclic with a method")
        if "chat_choice_logprobs" not in ctx.backend.capabilities():
            raise UserError(f"permute=pride needs the letter log-probabilities of a chat turn, which {ctx.backend.name} "
                            "cannot give (an in-process chat model can); use permute=cyclic with this backend")
        prior = self.pride_prior(ctx)
        sample = set(prior["sample"])
        lps = self._letter_logprobs(ctx, [(r, [0, 1, 2]) for r in items])
        out = []
        for r, lp in zip(items, lps):
            d = permute_mod.pride_choice(lp, prior["prior"])
            observed = max(range(3), key=lambda k: lp[k])
            out.append(self.record(r, pred=d, status="ok", letter=LETTERS[d], order=[0, 1, 2],
                                   letter_logprobs=[round(x, 5) for x in lp], observed_letter=LETTERS[observed],
                                   pride_prior=prior["prior"], calls=1 + (3 if r["id"] in sample else 0),
                                   **({"pride_sample": True} if r["id"] in sample else {})))
        return out

    def _answer(self, row: dict, order: list[int], res) -> dict[str, Any]:
        """One answer in one option order: letter shown, option meant, parse status, transcript."""
        d, status = self.parse_answer(row, order, res.text)
        return {"order": order, "letter": None if d is None else LETTERS[d], "option": None if d is None else order[d],
                "status": status, **res.to_record()}

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
        return self.record(row, pred=pred, status=status, vote=how, final_text=answers[0]["final_text"],
                           rotations=answers, **totals, **({"tie_scores": tie_scores} if tie_scores else {}))

    # -- metrics --------------------------------------------------------------------------------
    def metrics(self, records: list[dict[str, Any]]) -> dict[str, Any]:
        out = bbq_scoring.bbq_metrics(records, pred_key="pred", seed=self.opts.seed, roles=self.option_roles)
        attach(out, letter_positions(records, seed=self.opts.seed), "Answer letters and position bias (generation mode)",
               "letter_share: share of parsed answers at each letter (gold_share in metrics.json); position_bias: "
               "the top letter's share / its gold share (1 = none); rotation_consistency: items answered with the "
               "same option in every rotation (permute=cyclic)")
        pride = next((r["pride_prior"] for r in records if r.get("pride_prior")), None)
        if pride is not None:
            n_sample = sum(bool(r.get("pride_sample")) for r in records)
            changed = sum(r.get("observed_letter") not in (None, r.get("letter")) for r in records)
            out["pride"] = {"prior": dict(zip(LETTERS, pride)), "sample_items": n_sample,
                            "calls_for_prior": 3 * n_sample, "calls_per_item": sum(r.get("calls", 1) for r in records)
                            / len(records), "answers_changed_by_prior": changed,
                            "note": "PriDe (Zheng et al., ICLR 2024): letter probabilities divided by the prior the "
                                    "sample's rotations estimate"}
        native = dict(self.native_metrics(records) or {})
        out["rows"] += native.pop("rows", [])
        out["definitions"].update(native.pop("definitions", {}))
        out["summary"].update(native.pop("summary", {}))
        out.update(native)  # e.g. notes (one line each, printed by the CLI) and what data is missing
        return out

    #: the terminal table's short metric names (its legend says what they stand for)
    SHORT_METRICS: ClassVar[dict[str, str]] = {"accuracy": "acc", "bias_score": "bias", "stereotyped_rate": "stereo",
                                               "anti_stereotyped_rate": "anti"}

    summary_legend: ClassVar[str] = ("acc = accuracy, bias = s_AMB (ambig) / s_DIS (disambig), stereo / anti = share "
                                     "of answers naming the stereotyped / the other person; cells: value [95% CI]; "
                                     "n and every row in metrics.json")

    def summary_table(self, metrics: dict[str, Any]) -> list[dict[str, Any]]:
        """One line per category and metric, one column per context condition, each cell the value and its 95% CI:
        it reads at 80 columns (the full tidy rows, with n, are in metrics.json)."""
        conds = [c for c in ("ambig", "disambig", "all") if any(r.get("condition") == c for r in metrics.get("rows", []))]
        table: dict[tuple[str, str], dict[str, Any]] = {}
        for r in metrics.get("rows", []):
            if r.get("condition") not in conds or "category" not in r:
                continue
            m = self.SHORT_METRICS.get(r["metric"], r["metric"])
            line = table.setdefault((r["category"], m), {"category": r["category"], "metric": m,
                                                         **{c: "" for c in conds}})
            line[r["condition"]] = _cell(r.get("value"), r.get("ci_low"), r.get("ci_high"))
        return list(table.values())

    # -- paired comparison ----------------------------------------------------------------------
    @classmethod
    def paired_units(cls, records: list[dict[str, Any]]) -> list[dict[str, Any]]:
        units = []
        for r in records:
            if "pred" not in r or "label" not in r:
                raise UserError(f"record {r.get('id')} is not a scored {cls.title} item (needs pred and label)")
            p = r.get("pred")
            b = None if p is None else bbq_scoring.biased_from_roles(cls.option_roles(r), r.get("question_polarity"),
                                                                       int(p))
            units.append({"id": r["id"], "cell": r["context_condition"],
                          "correct": p is not None and int(p) == int(r["label"]),
                          "counted": b is not None, "biased": bool(b)})
        return units

    @classmethod
    def paired_statistics(cls, cell: str) -> dict[str, Any]:
        amb = cell == "ambig"

        def bias(a):
            return bbq_scoring.bias_stat(a["biased"], a["counted"], a["correct"] if amb else None)

        return {"accuracy": lambda a: a["correct"].mean(-1), "s_AMB" if amb else "s_DIS": bias,
                "stereotyped_rate": lambda a: (a["counted"] & a["biased"]).mean(-1),
                "anti_stereotyped_rate": lambda a: (a["counted"] & ~a["biased"]).mean(-1)}

    @classmethod
    def paired_definitions(cls) -> dict[str, str]:
        d = bbq_scoring.METRIC_DEFINITIONS
        return {"accuracy": d["accuracy"], "s_AMB / s_DIS": d["bias_score"],
                "stereotyped_rate": d["stereotyped_rate"], "anti_stereotyped_rate": d["anti_stereotyped_rate"]}


def _cell(value: Any, lo: Any, hi: Any) -> str:
    """'0.35 [0.29,0.41]': a value with its CI in 16-18 characters."""
    if value is None:
        return "n/a"
    if lo is None or hi is None:
        return f"{value:.2f}"
    return f"{value:.2f} [{lo:.2f},{hi:.2f}]"


def _letter_logprob_sums(backend, answers: list[dict]) -> list[float] | None:
    """Per original option, log P(its letter) at the final answer, summed over rotations; None if the
    backend cannot score a chat turn."""
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


def answers_of(record: dict[str, Any]) -> list[dict[str, Any]]:
    """The answers a record holds: one per rotation under ``permute=cyclic``, else the record itself
    (generation mode); empty for log-likelihood records."""
    return record.get("rotations") or ([record] if "final_text" in record else [])


def letter_positions(records: list[dict[str, Any]], seed: int = 0) -> dict[str, Any] | None:
    """Letter distribution and position bias of generation-mode records (None for log-likelihood runs)."""
    from ..stats.position import position_metrics

    chosen, gold, item, option = [], [], [], []
    for r in records:
        for a in answers_of(r):
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
    rotated = any(len(answers_of(r)) > 1 for r in records)
    # under rotation the prediction already controls for position: the skew describes the model, not the score
    advice = ("the permute=cyclic majority vote already controls for it; the skewed letters are the model's "
              "preference, not its prediction") if rotated else None
    return position_metrics(chosen, gold, item, option=option, seed=seed, advice=advice)


def summed_rows(metric: str, cells: dict[tuple[str, str], list[Sequence[float]]],
                statistic: Callable[[np.ndarray], np.ndarray], seed: int = 0, n_boot: int = 1000
                ) -> tuple[list[dict[str, Any]], dict[tuple[str, str], tuple[float, np.ndarray]]]:
    """Tidy rows of a statistic of per-item counts (:func:`fairdistill.stats.bootstrap.summed_statistic`)
    per category and "overall" (items resampled within categories) for each condition, with 95% bootstrap
    CIs; also each row's ``(value, resampled values)`` by (category, condition), to combine conditions."""
    rows, boots = [], {}
    for cond in sorted({c for _, c in cells}):
        cats = sorted(k for k, c in cells if c == cond and cells[(k, c)])
        if not cats:
            continue
        groups = [(k, np.asarray(cells[(k, cond)], dtype=float), None) for k in cats]
        strata = np.concatenate([np.full(len(g), j) for j, (_, g, _) in enumerate(groups)])
        groups.append(("overall", np.concatenate([g for _, g, _ in groups]), strata))
        for cat, counts, st in groups:
            value, boot = summed_statistic(counts, statistic, n_boot, seed, st)
            boots[(cat, cond)] = (value, boot)
            rows.append(interval_row(metric, cat, cond, value, boot, len(counts)))
    return rows, boots


def interval_row(metric: str, category: str, condition: str, value: float, boot: np.ndarray, n: int) -> dict[str, Any]:
    """One tidy row with the 95% percentile interval of ``boot``; NaN values become None."""
    lo, hi = percentile_interval(boot, estimate=value)
    return {"category": category, "condition": condition, "metric": metric,
            "value": None if np.isnan(value) else value, "ci_low": lo, "ci_high": hi, "n": int(n)}


def score_rows_file(bench: BiasQA, predictions: str, column: str,
                    to_item: Callable[[str, dict[str, Any]], dict[str, Any]]) -> dict[str, Any]:
    """Metrics of predictions made elsewhere: a file of the dataset's own rows (JSON array, jsonl, CSV
    or TSV) with ``column`` holding each answer: an option index (0-2), a letter ("B", "选项B", "Ｂ") or
    the option's text, read like a generated answer (unparsed ones are counted, and count as wrong).
    ``to_item(where, row)`` turns a row into an engine item (one-line errors naming file and row)."""
    from ..data import read_records

    rows = read_records(predictions)
    if not rows:
        raise UserError(f"{predictions}: no rows")
    lacking = [w for w, r in rows if column not in r]
    if lacking:
        raise UserError(f"{predictions}: column {column!r} missing in {len(lacking)} of {len(rows)} rows "
                        f"(first: {lacking[0]}); columns present: {', '.join(sorted(rows[0][1]))}")
    records = []
    for where, r in rows:
        item = to_item(where, r)
        value = r[column]
        if isinstance(value, bool) or not isinstance(value, (int, float, str, type(None))):
            raise UserError(f"{where}: column {column!r}: expected an option index, letter or text, got {value!r}")
        text = "" if value is None else str(int(value)) if isinstance(value, (int, float)) else value.strip()
        if text in ("0", "1", "2"):
            pred, status = int(text), "ok"
        else:
            pred, status = bench.parse_answer(item, [0, 1, 2], text)
        records.append(bench.record(item, pred=pred, status=status))
    out = bench.metrics(records)
    out["source"] = {"predictions": str(predictions), "column": column}
    return out
