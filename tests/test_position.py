"""Position bias: letter statistics, option rotation bookkeeping, majority vote, the skew warning."""
import re

import numpy as np
import pytest

from fairdistill.benchmarks.base import EvalContext
from fairdistill.benchmarks.bbq import BBQ, displayed_row, mc_question
from fairdistill.benchmarks.permute import majority, orders
from fairdistill.cli import main
from fairdistill.errors import UserError
from fairdistill.runner import run_benchmark
from fairdistill.stats.position import position_metrics, skew_warning
from fairdistill.store import RunStore

from doubles import ChatDouble

OPTION_RE = re.compile(r"^([ABC])\. (.*)$", re.M)


class OptionPicker(ChatDouble):
    """A chat backend that answers with the letter under which it sees the option ``choose(options)``.

    ``choose`` gets the displayed option texts and returns the text it wants; ``letter_prior``, when
    set, makes it answer that letter whatever is shown (a pure position bias).
    """

    name = "picker"
    prompt_tokens, completion_tokens = 5, 1

    def __init__(self, choose=None, letter_prior=None, scores=None):
        super().__init__()
        self.choose = choose
        self.letter_prior = letter_prior
        self.scores = scores  # text -> log-prob given to that option's letter (tie-break)

    @property
    def prompts(self):
        return [r.messages[-1]["content"] for r in self.requests]

    def reply(self, r):
        if self.letter_prior:
            return self.letter_prior
        prompt = r.messages[-1]["content"]
        shown = dict(OPTION_RE.findall(prompt))
        want = self.choose([shown[k] for k in "ABC"], prompt)
        return next(k for k, v in shown.items() if v == want) if want else "I have no idea."

    def chat_choice_logprobs(self, conversations, candidates):
        if self.scores is None:
            return super().chat_choice_logprobs(conversations, candidates)
        rows = []
        for conv in conversations:
            shown = dict(OPTION_RE.findall(conv[-1]["content"]))
            rows.append([self.scores(shown[k]) for k in candidates])
        return rows


def test_orders_and_displayed_row_map_back_in_every_rotation(bbq_dir):
    row = BBQ(categories=["Age"], limit=3, data=str(bbq_dir)).load_items()[0]
    assert orders(3, "none") == [[0, 1, 2]]
    assert orders(3, "cyclic") == [[0, 1, 2], [1, 2, 0], [2, 0, 1]]
    for order in orders(3, "cyclic"):
        shown = displayed_row(row, order)
        q = mc_question(row, order)
        for d, o in enumerate(order):
            assert shown[f"ans{d}"] == row[f"ans{o}"] == q.options[d]
            assert shown["answer_info"][f"ans{d}"] == row["answer_info"][f"ans{o}"]
            assert f"{'ABC'[d]}. {row[f'ans{o}']}" in q.prompt
        assert shown[f"ans{shown['label']}"] == row[f"ans{row['label']}"]
    with pytest.raises(UserError, match="permute"):
        orders(3, "shuffle")


def test_majority_vote():
    assert majority([1, 1, 1]) == (1, "unanimous")
    assert majority([2, 2, 0]) == (2, "majority")
    assert majority([2, None, 2]) == (2, "majority")
    assert majority([0, 1, 2]) == (None, "unresolved")
    assert majority([0, 1, 2], [-3.0, -1.0, -2.0]) == (1, "tie_logprob")
    assert majority([None, None, None]) == (None, "none_parsed")


def test_cyclic_run_maps_every_answer_back_to_its_option(bbq_dir, tmp_path):
    # a content-faithful model: always picks the first person option in the dataset's order
    bench = BBQ(categories=["Age", "Religion"], limit=6, mode="generate", permute="cyclic", data=str(bbq_dir))
    rows = {r["id"]: r for r in bench.load_items()}

    def choose(shown, prompt):
        row = next(r for r in rows.values() if prompt.startswith(r["context"] + "\n" + r["question"] + "\n")
                   and sorted(shown) == sorted(r[f"ans{k}"] for k in range(3)))
        return row["ans0"]

    be = OptionPicker(choose=choose)
    m = run_benchmark(bench, EvalContext(backend=be), RunStore(tmp_path), show_progress=False)
    recs = RunStore(tmp_path).load_results()
    assert len(be.prompts) == 3 * len(recs)
    for r in recs:
        assert [a["order"] for a in r["rotations"]] == orders(3, "cyclic")
        assert [a["option"] for a in r["rotations"]] == [0, 0, 0]
        # the letter moves with the rotation: option 0 is shown at A, C, B
        assert [a["letter"] for a in r["rotations"]] == ["A", "C", "B"]
        assert r["pred"] == 0 and r["vote"] == "unanimous" and r["calls"] == 3
    rows_by = {(x["metric"], x["letter"]): x for x in m["position"]["rows"]}
    assert rows_by[("rotation_consistency", None)]["value"] == 1.0
    for letter in "ABC":  # content-faithful: each letter exactly a third of the answers
        assert rows_by[("letter_share", letter)]["value"] == pytest.approx(1 / 3)
    assert m["position"]["warning"] is None


def test_pure_letter_prior_is_flagged_and_cancelled_by_rotation(bbq_dir, tmp_path):
    plain = BBQ(categories=["Age"], limit=12, mode="generate", data=str(bbq_dir))
    m = run_benchmark(plain, EvalContext(backend=OptionPicker(letter_prior="A")), RunStore(tmp_path / "p"),
                      show_progress=False)
    recs = RunStore(tmp_path / "p").load_results()
    assert all(r["letter"] == "A" and r["pred"] == 0 for r in recs)
    share_a = next(x for x in m["position"]["rows"] if x["metric"] == "letter_share" and x["letter"] == "A")
    assert share_a["value"] == 1.0
    gold_a = np.mean([r["label"] == 0 for r in recs])
    assert share_a["gold_share"] == pytest.approx(gold_a)
    assert m["position"]["warning"] and "letter A" in m["position"]["warning"] and "permute=cyclic" in m["position"]["warning"]
    # rotated, an "always A" model names a different option in each rotation: a tie, no log-probs -> unresolved
    cyc = BBQ(categories=["Age"], limit=12, mode="generate", permute="cyclic", data=str(bbq_dir))
    m2 = run_benchmark(cyc, EvalContext(backend=OptionPicker(letter_prior="A")), RunStore(tmp_path / "c"),
                       show_progress=False)
    recs2 = RunStore(tmp_path / "c").load_results()
    assert all(r["pred"] is None and r["status"] == "unresolved" and r["vote"] == "unresolved" for r in recs2)
    assert m2["counts"]["status"] == {"unresolved": 12} and m2["counts"]["n_unparsed"] == 12
    cons = next(x for x in m2["position"]["rows"] if x["metric"] == "rotation_consistency")
    assert cons["value"] == 0.0
    # rotated runs still report the model's letter preference, but do not advise the rotation they already use
    w = m2["position"]["warning"]
    assert w and "letter A" in w and "rerun" not in w and "already controls" in w


def test_ties_broken_by_summed_letter_logprobs(bbq_dir, tmp_path):
    bench = BBQ(categories=["Religion"], limit=6, mode="generate", permute="cyclic", data=str(bbq_dir))
    items = bench.load_items()
    unknown_texts = {r[f"ans{k}"] for r in items for k in range(3) if r["answer_info"][f"ans{k}"][1] == "unknown"}
    be = OptionPicker(letter_prior="B", scores=lambda text: 0.0 if text in unknown_texts else -5.0)
    run_benchmark(bench, EvalContext(backend=be), RunStore(tmp_path), show_progress=False)
    for r in RunStore(tmp_path).load_results():
        unk = next(k for k in range(3) if r["answer_info"][f"ans{k}"][1] == "unknown")
        assert r["vote"] == "tie_logprob" and r["pred"] == unk
        assert max(range(3), key=lambda o: r["tie_scores"][o]) == unk


def test_position_metrics_by_hand():
    # 2 items x 3 rotations; item 1 answers A,A,A (gold at A,C,B); item 2 answers A,B,None
    chosen = [0, 0, 0, 0, 1, None]
    gold = [0, 2, 1, 1, 0, 2]
    item = [1, 1, 1, 2, 2, 2]
    option = [0, 1, 2, 2, 2, None]
    m = position_metrics(chosen, gold, item, option=option, n_boot=200)
    share = {x["letter"]: x for x in m["rows"] if x["metric"] == "letter_share"}
    # gold letters of the 5 parsed answers: A, C, B, B, A
    assert share["A"]["value"] == pytest.approx(4 / 5) and share["A"]["gold_share"] == pytest.approx(2 / 5)
    assert share["B"]["gold_share"] == pytest.approx(2 / 5) and share["C"]["gold_share"] == pytest.approx(1 / 5)
    pb = next(x for x in m["rows"] if x["metric"] == "position_bias")
    assert pb["letter"] == "A" and pb["value"] == pytest.approx(2.0)
    cons = next(x for x in m["rows"] if x["metric"] == "rotation_consistency")
    assert cons["value"] == 0.0  # item 1 names three options; item 2 has an unparsed rotation
    assert m["letters"]["A"] == {"answers": 4, "gold": 2}


def test_skew_warning_threshold():
    assert skew_warning([0.5, 0.3, 0.2], [0.34, 0.33, 0.33]) is None  # 1.5x: not flagged
    assert skew_warning([0.7, 0.2, 0.1], [0.34, 0.33, 0.33], advice="look").endswith("(2.1x); look")
    w = skew_warning([0.7, 0.2, 0.1], [0.34, 0.33, 0.33])
    assert w.startswith("position bias: letter A takes 70%") and "2.1x" in w
    assert "never right" in skew_warning([0.5, 0.5, 0.0], [0.0, 0.5, 0.5])
    # 199 of 200 answers is not "100%"
    assert "takes 99.5% of answers" in skew_warning([0.995, 0.0, 0.005, 0.0], [0.23, 0.22, 0.275, 0.275])


def test_permute_in_loglik_mode_is_a_one_line_error(tiny_gpt2_path, capsys, tmp_path):
    rc = main(["eval", "bbq", "--model", str(tiny_gpt2_path), "--mode", "loglik", "--categories", "Age",
               "--limit", "2", "-o", "permute=cyclic", "--out", str(tmp_path / "r"), "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 2 and "generation mode" in err and len(err.strip().splitlines()) == 1


def test_cli_cyclic_end_to_end_tiny_chat_model(tiny_llama_chat_path, tmp_path, capsys):
    out = tmp_path / "run"
    args = ["eval", "bbq", "--model", str(tiny_llama_chat_path), "--mode", "generate", "--categories", "Age",
            "--limit", "4", "-o", "permute=cyclic", "-o", "max_new_tokens=3", "--out", str(out), "--no-progress"]
    assert main(args) == 0
    recs = RunStore(out).load_results()
    assert len(recs) == 4 and all(len(r["rotations"]) == 3 for r in recs)
    for r in recs:
        for a in r["rotations"]:
            assert a["transcript"][-1]["role"] == "assistant"
            if a["letter"] is not None:
                assert a["option"] == a["order"]["ABC".index(a["letter"])]
        # a random model's ties are broken by the HF backend's letter log-probs, never left unresolved
        assert r["vote"] != "unresolved"
    assert "letter_share" in capsys.readouterr().out
