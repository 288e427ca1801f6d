"""Local lm-evaluation-harness task definitions over ``shared/data`` (no hub access).

lm-eval's own MMLU / GPQA / IFEval tasks load their data from the Hugging Face hub. These
definitions ask the same questions with the same prompts, metrics and aggregation, but read the
local copies found by :func:`fairdistill.data.find_dataset`. Because lm-eval task YAML names its
data files by path, the YAML is written at run time (absolute paths) into a folder handed to
``lm_eval.tasks.TaskManager(include_path=...)``:

- ``fd_mmlu`` (group, sample-weighted mean like lm-eval's ``mmlu``) and ``fd_mmlu_<subject>``:
  the prompt of lm-eval's ``mmlu`` default task ("{question}\\nA. ..\\nB. ..\\nAnswer:", choices
  " A".." D", metric ``acc``); few-shot examples from the dev split, first-n.
- ``fd_gpqa_diamond``: the prompt of lm-eval's ``gpqa_diamond_zeroshot`` (choices "(A)".."(D)",
  ``acc`` and ``acc_norm``). lm-eval shuffles the four answers with the global RNG at load time;
  here each question's shuffle is seeded by its record id and the run seed, so a question's
  option order is the same in every run (before/after comparisons are paired).
- ``fd_ifeval``: lm-eval's ``ifeval`` config and scoring functions (``lm_eval.tasks.ifeval.utils``)
  over ``ifeval/input_data.jsonl``. IFEval's checker needs ``langdetect``, ``immutabledict`` and
  NLTK's ``punkt_tab`` data; :func:`ifeval_problem` says what is missing (NLTK downloads
  ``punkt_tab`` at import, which fails offline).

The datasets cache of these files lives in the same temporary folder (no growth of
``~/.cache/huggingface`` per run). The data is converted to jsonl (exact types: strings stay strings, the answer index stays an int)
beside the YAML, and the original files' SHA-256 go into the run config.
"""
from __future__ import annotations

import csv
import importlib.util
import json
import random
from pathlib import Path
from typing import Any

from ...data import find_dataset
from ...errors import UserError

MMLU_TEMPLATE = (
    "{{question.strip()}}\nA. {{choices[0]}}\nB. {{choices[1]}}\nC. {{choices[2]}}\nD. {{choices[3]}}\nAnswer:"
)
GPQA_TEMPLATE = (
    "What is the correct answer to this question:{{Question}}\nChoices:\n(A) {{choice1}}\n(B) {{choice2}}\n"
    "(C) {{choice3}}\n(D) {{choice4}}\nAnswer:"
)

#: user-facing task names served by the local definitions -> local lm-eval task name
LOCAL_ALIASES = {
    "mmlu": "fd_mmlu",
    "gpqa_diamond": "fd_gpqa_diamond",
    "gpqa_diamond_zeroshot": "fd_gpqa_diamond",
    "gpqa": "fd_gpqa_diamond",
    "ifeval": "fd_ifeval",
}


def local_name(task: str) -> str | None:
    """The local task serving ``task`` (``mmlu``, ``mmlu_anatomy``, ``gpqa_diamond``, ``ifeval``), or None."""
    if task.startswith("fd_"):
        return task
    if task in LOCAL_ALIASES:
        return LOCAL_ALIASES[task]
    if task.startswith("mmlu_") and task[5:] in mmlu_subjects(must_exist=False):
        return "fd_" + task
    return None


def mmlu_subjects(data: str | None = None, must_exist: bool = True) -> list[str]:
    try:
        folder = find_dataset("mmlu", data)
    except UserError:
        if must_exist:
            raise
        return []
    return sorted(p.name[: -len("_test.csv")] for p in (folder / "test").glob("*_test.csv"))


def ifeval_problem() -> str | None:
    """Why IFEval cannot be scored here, or None when its checker's dependencies are present."""
    missing = [m for m in ("langdetect", "immutabledict", "nltk") if importlib.util.find_spec(m) is None]
    if missing:
        return (f"IFEval's checker needs the Python packages {', '.join(missing)} "
                f"(pip install {' '.join(missing)})")
    import nltk

    try:
        nltk.data.find("tokenizers/punkt_tab")
    except LookupError:
        return ("IFEval's checker needs NLTK's punkt_tab data, which lm-eval downloads at import time "
                "and which cannot be fetched offline (python -m nltk.downloader punkt_tab while online, "
                "or set NLTK_DATA to a folder holding tokenizers/punkt_tab)")
    return None


def _read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(encoding="utf-8", newline="") as f:
        return list(csv.DictReader(f))


def _write_jsonl(path: Path, rows: list[dict[str, Any]]) -> None:
    with path.open("w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")


def _yaml(path: Path, cfg: dict[str, Any], functions: dict[str, str] | None = None) -> None:
    """Write a task YAML; ``functions`` maps keys to ``!function module.name`` references."""
    import yaml

    text = yaml.safe_dump(cfg, sort_keys=False, allow_unicode=True, width=10_000)
    for key, ref in (functions or {}).items():
        text += f"{key}: !function {ref}\n"
    path.write_text(text, encoding="utf-8")


def _mmlu_rows(path: Path) -> list[dict[str, Any]]:
    rows = []
    for k, r in enumerate(_read_csv(path), 2):
        try:
            rows.append({"question": r["question"],
                         "choices": [r["choice0"], r["choice1"], r["choice2"], r["choice3"]],
                         "answer": int(r["answer"])})
        except (KeyError, ValueError) as e:
            raise UserError(f"{path}:{k}: bad MMLU row ({e}); expected question,choice0..3,answer(0-3)") from None
    return rows


def write_mmlu(out: Path, data: str | None, subjects: list[str] | None) -> tuple[list[str], list[str]]:
    """Write ``fd_mmlu_<subject>`` tasks and the ``fd_mmlu`` group; return (task names, data files)."""
    folder = find_dataset("mmlu", data)
    known = mmlu_subjects(data)
    subjects = subjects or known
    bad = [s for s in subjects if s not in known]
    if bad:
        raise UserError(f"MMLU subjects not found in {folder}/test: {', '.join(bad)}")
    d = out / "fd_mmlu"
    d.mkdir(parents=True, exist_ok=True)
    files, names = [], []
    for s in subjects:
        test, dev = folder / "test" / f"{s}_test.csv", folder / "dev" / f"{s}_dev.csv"
        _write_jsonl(d / f"{s}_test.jsonl", _mmlu_rows(test))
        files.append(str(test))
        data_files = {"test": str(d / f"{s}_test.jsonl")}
        if dev.exists():
            _write_jsonl(d / f"{s}_dev.jsonl", _mmlu_rows(dev))
            data_files["dev"] = str(d / f"{s}_dev.jsonl")
            files.append(str(dev))
        cfg = {
            "task": f"fd_mmlu_{s}",
            "task_alias": s,
            "dataset_path": "json",
            "dataset_kwargs": {"data_files": data_files, "cache_dir": str(out / "hf_cache")},
            "test_split": "test",
            "output_type": "multiple_choice",
            "description": f"The following are multiple choice questions (with answers) about {s.replace('_', ' ')}.\n\n",
            "doc_to_text": MMLU_TEMPLATE,
            "doc_to_choice": ["A", "B", "C", "D"],
            "doc_to_target": "answer",
            "metric_list": [{"metric": "acc", "aggregation": "mean", "higher_is_better": True}],
            "metadata": {"version": 1.0, "source": str(test)},
        }
        if "dev" in data_files:
            cfg["fewshot_split"] = "dev"
            cfg["fewshot_config"] = {"sampler": "first_n"}
        _yaml(d / f"fd_mmlu_{s}.yaml", cfg)
        names.append(f"fd_mmlu_{s}")
    _yaml(d / "_fd_mmlu.yaml", {
        "group": "fd_mmlu",
        "group_alias": "mmlu (local data)",
        "task": names,
        "aggregate_metric_list": [{"metric": "acc", "weight_by_size": True}],
        "metadata": {"version": 2},
    })
    return names, files


def _task_files(dataset: str, data: str | None, filename: str, what: str, out: Path, task_dir: str) -> tuple[Path, Path]:
    """The source file of a local task (a one-line error if absent) and the folder its YAML goes in."""
    src = find_dataset(dataset, data) / filename
    if not src.exists():
        raise UserError(f"{what} not found: {src}")
    d = out / task_dir
    d.mkdir(parents=True, exist_ok=True)
    return src, d


def write_gpqa(out: Path, data: str | None, seed: int) -> list[str]:
    src, d = _task_files("gpqa", data, "gpqa_diamond.csv", "GPQA diamond file", out, "fd_gpqa")

    def pre(t: str | None) -> str:  # lm-eval's gpqa utils.preprocess
        if t is None:
            return " "
        return t.strip().replace(" [title]", ". ").replace("  ", " ")

    rows = []
    for k, r in enumerate(_read_csv(src), 2):
        try:
            correct = pre(r["Correct Answer"])
            choices = [pre(r["Incorrect Answer 1"]), pre(r["Incorrect Answer 2"]), pre(r["Incorrect Answer 3"]), correct]
        except KeyError as e:
            raise UserError(f"{src}:{k}: missing GPQA column {e}") from None
        random.Random(f"{seed}-{r.get('Record ID', k)}").shuffle(choices)
        rows.append({"Question": r["Question"], "choice1": choices[0], "choice2": choices[1],
                     "choice3": choices[2], "choice4": choices[3], "answer": choices.index(correct),
                     "record_id": r.get("Record ID", str(k))})
    _write_jsonl(d / "gpqa_diamond.jsonl", rows)
    _yaml(d / "fd_gpqa_diamond.yaml", {
        "task": "fd_gpqa_diamond",
        "task_alias": "gpqa_diamond (local data, zero-shot)",
        "dataset_path": "json",
        "dataset_kwargs": {"data_files": {"train": str(d / "gpqa_diamond.jsonl")}, "cache_dir": str(out / "hf_cache")},
        "test_split": "train",
        "output_type": "multiple_choice",
        "num_fewshot": 0,
        "doc_to_text": GPQA_TEMPLATE,
        "doc_to_choice": ["(A)", "(B)", "(C)", "(D)"],
        "doc_to_target": "answer",
        "metric_list": [{"metric": "acc", "aggregation": "mean", "higher_is_better": True},
                        {"metric": "acc_norm", "aggregation": "mean", "higher_is_better": True}],
        "metadata": {"version": 2.2, "source": str(src), "shuffle_seed": seed},
    })
    return [str(src)]


def write_ifeval(out: Path, data: str | None, max_gen_toks: int) -> list[str]:
    problem = ifeval_problem()
    if problem:
        raise UserError(problem)
    src, d = _task_files("ifeval", data, "input_data.jsonl", "IFEval prompts", out, "fd_ifeval")
    (d / "fd_ifeval_utils.py").write_text(
        "from lm_eval.tasks.ifeval.utils import agg_inst_level_acc, process_results  # noqa: F401\n")
    _yaml(d / "fd_ifeval.yaml", {
        "task": "fd_ifeval",
        "task_alias": "ifeval (local data)",
        "dataset_path": "json",
        "dataset_kwargs": {"data_files": {"train": str(src)}, "cache_dir": str(out / "hf_cache")},
        "test_split": "train",
        "output_type": "generate_until",
        "num_fewshot": 0,
        "doc_to_text": "prompt",
        "doc_to_target": 0,
        "generation_kwargs": {"until": [], "do_sample": False, "temperature": 0.0, "max_gen_toks": max_gen_toks},
        "metadata": {"version": 4.0, "source": str(src)},
    }, functions={"process_results": "fd_ifeval_utils.process_results"})
    # metric_list needs !function aggregations for the instruction-level metrics
    with (d / "fd_ifeval.yaml").open("a", encoding="utf-8") as f:
        f.write(
            "metric_list:\n"
            "  - metric: prompt_level_strict_acc\n    aggregation: mean\n    higher_is_better: true\n"
            "  - metric: inst_level_strict_acc\n    aggregation: !function fd_ifeval_utils.agg_inst_level_acc\n"
            "    higher_is_better: true\n"
            "  - metric: prompt_level_loose_acc\n    aggregation: mean\n    higher_is_better: true\n"
            "  - metric: inst_level_loose_acc\n    aggregation: !function fd_ifeval_utils.agg_inst_level_acc\n"
            "    higher_is_better: true\n"
        )
    return [str(src)]
