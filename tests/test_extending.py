"""The "Extending fairdistill" example (docs/extending.md): a benchmark, a method and a backend in one user module,
found without editing any list, run end to end through `fairdistill eval`."""
import json
import textwrap

import pytest

from fairdistill.cli import main
from fairdistill.registry import BACKENDS, BENCHMARKS, METHODS

PLUGIN = textwrap.dedent('''
    """A toy plugin: a yes/no benchmark, a method that adds a system prompt, a backend that echoes."""
    from fairdistill.backends.base import Backend, GenerationResult
    from fairdistill.benchmarks.base import Benchmark
    from fairdistill.methods.base import GenerationConfig, Method, MethodResult, user_turn
    from fairdistill.methods.base import Question
    from fairdistill.registry import BACKENDS, BENCHMARKS, METHODS


    @BACKENDS.register("toy")
    class ToyBackend(Backend):
        """Answers "yes" unless the conversation contains a system message."""

        @classmethod
        def from_spec(cls, target, **options):
            be = cls()
            be.name = f"toy:{target}"
            return be

        @property
        def can_chat(self):
            return True

        def generate(self, requests):
            return [GenerationResult(text="no" if any(m["role"] == "system" for m in r.messages) else "yes",
                                     prompt_tokens=3, completion_tokens=1) for r in requests]


    @METHODS.register("be-careful")
    class BeCareful(Method):
        name = "be-careful"

        def answer(self, questions, gen=None):
            gen = gen or GenerationConfig()
            convs = [[{"role": "system", "content": "Think twice."}, {"role": "user", "content": user_turn(q)}]
                     for q in questions]
            return [MethodResult(text=o.text, transcript=c, calls=1) for c, o in zip(convs, self._chat(convs, gen))]


    @BENCHMARKS.register("toy-yes-no")
    class ToyYesNo(Benchmark):
        name = "toy-yes-no"
        description = "share of 'yes' answers to four questions"
        supports_methods = True

        def items(self):
            return [{"id": f"q{i}", "prompt": f"Question {i}?"} for i in range(4)]

        def evaluate(self, items, ctx):
            from fairdistill.methods.base import get_method

            method = ctx.method or get_method("baseline", ctx.backend)
            res = method.answer([Question(prompt=it["prompt"], answer_instruction="yes or no") for it in items])
            return [{"id": it["id"], "yes": r.text == "yes"} for it, r in zip(items, res)]

        def metrics(self, records):
            share = sum(r["yes"] for r in records) / len(records)
            return {"rows": [{"metric": "yes_share", "value": share, "ci_low": None, "ci_high": None,
                              "n": len(records)}]}
''')


@pytest.fixture
def plugin(tmp_path, monkeypatch):
    (tmp_path / "fd_toy_plugin.py").write_text(PLUGIN)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("FAIRDISTILL_PLUGINS", "fd_toy_plugin")
    yield
    for reg, name in ((BACKENDS, "toy"), (METHODS, "be-careful"), (BENCHMARKS, "toy-yes-no")):
        reg._items.pop(name, None)


def test_toy_plugin_runs_end_to_end_through_eval(plugin, tmp_path, capsys):
    for method, expected in ((None, 1.0), ("be-careful", 0.0)):
        out = tmp_path / f"run-{method}"
        args = ["eval", "toy-yes-no", "--model", "toy:anything", "--out", str(out), "--no-progress"]
        assert main(args + (["--method", method] if method else [])) == 0, capsys.readouterr().err
        m = json.loads((out / "metrics.json").read_text())
        assert m["rows"][0]["metric"] == "yes_share" and m["rows"][0]["value"] == expected
        assert len((out / "results.jsonl").read_text().splitlines()) == 4
    # listed by name beside the built-ins
    assert main(["list"]) == 0
    listed = capsys.readouterr().out
    assert "toy-yes-no" in listed and "be-careful" in listed and "toy" in listed


def test_unimportable_plugin_is_one_line(monkeypatch, capsys, tmp_path):
    monkeypatch.setenv("FAIRDISTILL_PLUGINS", "fd_no_such_plugin")
    assert main(["eval", "bbq", "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "fd_no_such_plugin" in err
