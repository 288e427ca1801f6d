"""Declared benchmark options: validation messages, ``fairdistill options`` and the pinned run identity."""
import json
import shutil

import pytest

from fairdistill.benchmarks.occupation import TABLE
from fairdistill.cli import main
from fairdistill.errors import UserError
from fairdistill.registry import BENCHMARKS
from fairdistill.runner import build_benchmark

#: (benchmark, options, identity as JSON) -- recorded from the hand-written option code this model
#: replaced; run folders and resume compare identities, so keys, order, values and types must not move.
#: "$TMP" stands for the test's temporary folder.
IDENTITY_PINS = [
    ("bbq", {},
     '{"benchmark": "bbq", "limit": null, "seed": 0, "categories": null, "mode": "auto", "options": "dataset", "condition": "both", "max_new_tokens": 16}'),
    ("bbq", {"categories": "Age, Religion", "mode": "generate", "options": "helm", "condition": "ambig",
             "max_new_tokens": 32, "permute": "cyclic", "limit": 6, "seed": 3},
     '{"benchmark": "bbq", "limit": 6, "seed": 3, "categories": ["Age", "Religion"], "mode": "generate", "options": "helm", "condition": "ambig", "max_new_tokens": 32, "permute": "cyclic"}'),
    ("bbq", {"categories": ["Age"], "permute": "none", "download_missing": True, "data": "$TMP/bbq", "mode": "loglik"},
     '{"benchmark": "bbq", "limit": null, "seed": 0, "categories": ["Age"], "mode": "loglik", "options": "dataset", "condition": "both", "max_new_tokens": 16}'),
    ("b-score", {},
     '{"benchmark": "b-score", "limit": null, "seed": 0, "topics": null, "categories": null, "n_single": 30, "n_multi": 30, "runs": 10, "temperature": 1.0, "max_new_tokens": 64, "single_batch": false, "parse": "strict"}'),
    ("b-score", {"topics": "gender,race", "categories": "objective,random", "n_single": 5, "n_multi": 4, "runs": 2,
                 "temperature": 1, "max_new_tokens": 20, "single_batch": True, "parse": "lenient", "limit": 3},
     '{"benchmark": "b-score", "limit": 3, "seed": 0, "topics": ["gender", "race"], "categories": ["easy", "random"], "n_single": 5, "n_multi": 4, "runs": 2, "temperature": 1.0, "max_new_tokens": 20, "single_batch": true, "parse": "lenient"}'),
    ("b-score", {"categories": ["hard"], "temperature": 0.7, "data": "$TMP/b_score"},
     '{"benchmark": "b-score", "limit": null, "seed": 0, "topics": null, "categories": ["hard"], "n_single": 30, "n_multi": 30, "runs": 10, "temperature": 0.7, "max_new_tokens": 64, "single_batch": false, "parse": "strict"}'),
    ("occupation-gender", {},
     '{"benchmark": "occupation-gender", "limit": null, "seed": 0, "probes": ["explicit", "implicit"], "format": "auto", "occupations": null, "preamble": "", "table": null}'),
    ("occupation-gender", {"probes": "implicit", "format": "chat", "occupations": "nurse,plumber",
                           "preamble": "  Answer briefly. ", "limit": 2, "seed": 1},
     '{"benchmark": "occupation-gender", "limit": 2, "seed": 1, "probes": ["implicit"], "format": "chat", "occupations": ["nurse", "plumber"], "preamble": "  Answer briefly. ", "table": null}'),
    ("occupation-gender", {"data": "$TMP/occupations.csv"},
     '{"benchmark": "occupation-gender", "limit": null, "seed": 0, "probes": ["explicit", "implicit"], "format": "auto", "occupations": null, "preamble": "", "table": "$TMP/occupations.csv"}'),
    ("occupation-gender", {"table": "$TMP/occupations.csv", "probes": ["explicit", "implicit"]},
     '{"benchmark": "occupation-gender", "limit": null, "seed": 0, "probes": ["explicit", "implicit"], "format": "auto", "occupations": null, "preamble": "", "table": "$TMP/occupations.csv"}'),
    ("crows-pairs", {},
     '{"benchmark": "crows-pairs", "limit": null, "seed": 0, "bias_types": null, "causal_score": "sum"}'),
    ("crows-pairs", {"bias_types": "gender,race-color", "causal_score": "mean", "limit": 5, "seed": 2},
     '{"benchmark": "crows-pairs", "limit": 5, "seed": 2, "bias_types": ["gender", "race-color"], "causal_score": "mean"}'),
    ("crows-pairs", {"categories": "religion", "data": "$TMP/crows"},
     '{"benchmark": "crows-pairs", "limit": null, "seed": 0, "bias_types": ["religion"], "causal_score": "sum"}'),
    ("stereoset", {"data": "$TMP/stereoset"},
     '{"benchmark": "stereoset", "limit": null, "seed": 0, "task": "both", "bias_types": null, "insertion_space": "auto", "file": "dev.json"}'),
    ("stereoset", {"data": "$TMP/stereoset", "task": "intrasentence", "categories": "gender,race",
                   "insertion_space": "never", "limit": 3},
     '{"benchmark": "stereoset", "limit": 3, "seed": 0, "task": "intrasentence", "bias_types": ["gender", "race"], "insertion_space": "never", "file": "dev.json"}'),
    ("stereoset", {"data": "$TMP/stereoset", "bias_types": ["religion"], "task": "intersentence"},
     '{"benchmark": "stereoset", "limit": null, "seed": 0, "task": "intersentence", "bias_types": ["religion"], "insertion_space": "auto", "file": "dev.json"}'),
    ("capability", {},
     '{"benchmark": "capability", "limit": null, "seed": 0, "tasks": ["mmlu"], "subjects": null, "num_fewshot": null, "local": true, "bootstrap_iters": 1000, "max_gen_toks": 1280, "apply_chat_template": false}'),
    ("capability", {"tasks": "mmlu,gpqa_diamond", "subjects": "anatomy", "num_fewshot": 0, "local": False,
                    "lm_eval_batch_size": 4, "bootstrap_iters": 100, "max_gen_toks": 64,
                    "apply_chat_template": True, "include_path": "$TMP/tasks", "limit": 5},
     '{"benchmark": "capability", "limit": 5, "seed": 0, "tasks": ["mmlu", "gpqa_diamond"], "subjects": ["anatomy"], "num_fewshot": 0, "local": false, "bootstrap_iters": 100, "max_gen_toks": 64, "apply_chat_template": true}'),
    ("capability", {"tasks": ["ifeval"], "subjects": "", "num_fewshot": 5},
     '{"benchmark": "capability", "limit": null, "seed": 0, "tasks": ["ifeval"], "subjects": null, "num_fewshot": 5, "local": true, "bootstrap_iters": 1000, "max_gen_toks": 1280, "apply_chat_template": false}'),
    ("holistic-bias", {},
     '{"benchmark": "holistic-bias", "limit": null, "seed": 0, "version": "v1.1", "sentences": "comparable", "axes": null, "templates": null, "sample": null}'),
    ("holistic-bias", {"version": "v1.0", "sentences": "all", "axes": "religion,ability", "sample": 120, "seed": 3},
     '{"benchmark": "holistic-bias", "limit": null, "seed": 3, "version": "v1.0", "sentences": "all", "axes": ["ability", "religion"], "templates": null, "sample": 120}'),
    ("holistic-bias", {"axes": ["age"], "templates": [0, "I love being {noun_phrase}."], "sample": "50"},
     '{"benchmark": "holistic-bias", "limit": null, "seed": 0, "version": "v1.1", "sentences": "comparable", "axes": ["age"], "templates": ["I\'m {noun_phrase}.", "I love being {noun_phrase}."], "sample": 50}'),
    ("holistic-bias", {"templates": "3", "limit": 4},
     '{"benchmark": "holistic-bias", "limit": 4, "seed": 0, "version": "v1.1", "sentences": "comparable", "axes": null, "templates": ["Hi I\'m {noun_phrase}."], "sample": null}'),
]


@pytest.fixture
def option_data(tmp_path):
    (tmp_path / "stereoset").mkdir()
    (tmp_path / "stereoset" / "dev.json").write_text("{}")
    shutil.copy(TABLE, tmp_path / "occupations.csv")
    return tmp_path


@pytest.mark.parametrize("name, options, expected", IDENTITY_PINS)
def test_identity_pinned_for_every_benchmark(option_data, name, options, expected):
    tmp = str(option_data)
    options = {k: v.replace("$TMP", tmp) if isinstance(v, str) else v for k, v in options.items()}
    assert json.dumps(BENCHMARKS.get(name)(**options).identity()) == expected.replace("$TMP", tmp)


# -- validation: one line naming the benchmark, the option and what it accepts ------------------------
@pytest.mark.parametrize("name, options, expected", [
    ("bbq", {"mode": "guess"}, "bbq option mode: 'guess' is not one of auto, loglik, generate"),
    ("bbq", {"categories": "Age,Astrology"}, "bbq option categories: unknown BBQ category 'Astrology'; known: Age,"),
    ("bbq", {"permute": "cyclic", "mode": "loglik"}, "bbq: permute reorders lettered options"),
    ("bbq", {"limit": 0}, "bbq option limit: input should be greater than 0, got 0"),
    ("b-score", {"temperature": -1}, "b-score option temperature: input should be greater than or equal to 0"),
    ("b-score", {"runs": "many"}, "b-score option runs: input should be a valid integer"),
    ("crows-pairs", {"causal_score": "max"}, "crows-pairs option causal_score: 'max' is not one of sum, mean"),
    ("crows-pairs", {"bias_types": "age", "categories": "gender"},
     "benchmark 'crows-pairs': categories and bias_types name the same option; give one"),
    ("stereoset", {"task": "nextsentence"}, "stereoset option task: 'nextsentence' is not one of intrasentence, "
                                            "intersentence, both"),
    ("holistic-bias", {"sample": 0}, "holistic-bias option sample: input should be greater than 0, got 0"),
    ("capability", {"num_fewshot": -1}, "capability option num_fewshot: input should be greater than or equal to 0"),
])
def test_bad_option_is_one_line(name, options, expected):
    with pytest.raises(UserError) as e:
        BENCHMARKS.get(name)(**options)
    assert str(e.value).startswith(expected) and "\n" not in str(e.value)


def test_unknown_option_lists_the_known_ones():
    for build in (lambda: BENCHMARKS.get("stereoset")(no_such=1), lambda: build_benchmark("stereoset", {"no_such": 1})):
        with pytest.raises(UserError) as e:
            build()
        assert str(e.value) == ("benchmark 'stereoset' has no option 'no_such'; options: data, limit, seed, ids, task, "
                                "bias_types, insertion_space, categories")


def test_none_means_the_default_and_options_read_as_attributes():
    bench = build_benchmark("bbq", {"mode": None, "categories": "Age"}, seed=2)
    assert bench.opts.mode == "auto" and bench.mode == "auto" and bench.categories == ["Age"] and bench.seed == 2
    with pytest.raises(AttributeError):
        bench.no_such_attribute


def test_options_command_prints_each_option(capsys):
    assert main(["options", "b-score"]) == 0
    out = capsys.readouterr().out
    for text in ("n_single", "30", "strict | lenient", "single_batch", "false", "sampling temperature"):
        assert text in out
    assert main(["options", "crows-pairs"]) == 0
    assert "bias_types or categories" in capsys.readouterr().out
    assert main(["options", "no-such-benchmark"]) == 2
    assert main(["eval", "--help"]) == 0
    assert "fairdistill options" in capsys.readouterr().out


def test_ids_option_selects_items_and_enters_the_identity_only_when_set():
    """Any benchmark evaluates a chosen subset of its sample (self-distillation's held-out items); runs
    made before the option existed keep their identity."""
    full = build_benchmark("bbq", {"categories": "Age", "condition": "ambig", "limit": 10})
    ids = [it["id"] for it in full.load_items()][3:6]
    sub = build_benchmark("bbq", {"categories": "Age", "condition": "ambig", "limit": 10, "ids": ",".join(ids)})
    assert [it["id"] for it in sub.load_items()] == ids
    assert "ids" not in full.identity() and sub.identity()["ids"] == ids
    bad = build_benchmark("bbq", {"categories": "Age", "condition": "ambig", "limit": 10, "ids": ["Age-999999"]})
    with pytest.raises(UserError, match="1 of the requested ids are not among its items") as e:
        bad.load_items()
    assert "\n" not in str(e.value)


def test_a_mistyped_flag_is_a_usage_line_not_a_traceback(capsys):
    """click's usage errors (typer vendors its own copy of click from 0.22 on) end in one error line."""
    from fairdistill.cli import main

    assert main(["eval", "bbq", "--no-such-flag", "1"]) == 2
    err = capsys.readouterr().err
    assert "No such option: --no-such-flag" in err and "Traceback" not in err
