"""Counterfactual data augmentation: word swaps on a hand-written list, two-sided augmentation, and a
CDA fine-tuning run (LoRA and full) on tiny models that is then evaluated."""
from __future__ import annotations

import json

import pytest

from fairdistill.cli import main
from fairdistill.distill.cda import Swapper, load_texts, load_word_pairs, run_cda
from fairdistill.errors import UserError

# (original, counterfactual), written by hand from the rules in fairdistill.distill.cda's docstring
SWAPS = [
    # case
    ("he went home", "she went home"),
    ("He went home", "She went home"),
    ("HE WENT HOME", "SHE WENT HOME"),
    ("She thanked the King.", "He thanked the Queen."),
    # plural (listed) and possessive
    ("The boys and their fathers", "The girls and their mothers"),
    ("the man's hat and the boys' toys", "the woman's hat and the girls' toys"),
    ("The men's room", "The women's room"),
    ("he's late", "she's late"),
    ("Mr. Smith met the spokesmen", "Mrs. Smith met the spokeswomen"),
    # pronouns: her -> his / him, his -> her / hers
    ("her book", "his book"),
    ("Her dog bit his hand", "His dog bit her hand"),
    ("I saw her.", "I saw him."),
    ("She gave her the keys", "He gave him the keys"),
    ("told her that it was late", "told him that it was late"),
    ("let her go", "let him go"),
    ("The book is his.", "The book is hers."),
    ("The book is hers, not mine", "The book is his, not mine"),
    ("he hurt himself", "she hurt herself"),
    # words that must not change: substrings and unlisted compounds
    ("the other thesis is here", "the other thesis is here"),
    ("The others took this history", "The others took this history"),
    ("The manager, a human, has a shell", "The manager, a human, has a shell"),
    ("Sheila heard the echo", "Sheila heard the echo"),
    ("a woman and a man", "a man and a woman"),
]


@pytest.fixture(scope="module")
def swapper() -> Swapper:
    return Swapper.from_lists("bias_bench")


@pytest.mark.parametrize("original,counterfactual", SWAPS)
def test_swaps(swapper, original, counterfactual):
    assert swapper.swap(original) == counterfactual


def test_counts_and_two_sided_augmentation(swapper):
    assert swapper.swap_counted("He told her that his sister was late")[1:] == (2, 2)
    texts = ["He is a doctor.", "The table is round.", "Her aunt called."]
    out, n = swapper.augment(texts)
    assert n == 2 and out == texts + ["She is a doctor.", "His uncle called."]


def test_generated_plurals_and_own_list_files(tmp_path):
    f = tmp_path / "pairs.json"
    f.write_text(json.dumps([["nephew", "niece"], ["policeman", "policewoman"], ["duke", "duchess"]]))
    s = Swapper.from_lists([str(f)])
    assert s.swap("The nephews met two policemen and the duchesses") == "The nieces met two policewomen and the dukes"
    tsv = tmp_path / "pairs.tsv"
    tsv.write_text("lad\tlass\n\nsir\tmadam\n")
    assert Swapper.from_lists(str(tsv)).swap("Sir, the lads") == "Madam, the lasses"


def test_listed_pairs_are_male_first():
    pairs = dict(load_word_pairs("bias_bench"))
    assert pairs["father"] == "mother" and pairs["king"] == "queen"
    assert dict(load_word_pairs("names"))["john"] == "mary"


def test_bad_word_lists_are_one_line(tmp_path):
    with pytest.raises(UserError, match="unknown word list 'gendr'"):
        Swapper.from_lists("gendr")
    bad = tmp_path / "bad.tsv"
    bad.write_text("king\tqueen\nprince\n")
    with pytest.raises(UserError, match=r"bad\.tsv:2: expected a \[male, female\] pair"):
        Swapper.from_lists(str(bad))


def test_winobias_corpus_is_clean():
    texts = load_texts("winobias")
    assert len(texts) == 4 * 396
    assert texts[0] == "The developer argued with the designer because he did not like the design."
    assert not any("[" in t or t[0].isdigit() for t in texts)


def test_cda_training_then_evaluation(tiny_gpt2_path, tmp_path):
    """A few LoRA steps on the augmented WinoBias corpus; the merged model evaluates like any other."""
    out = tmp_path / "cda"
    s = run_cda(str(tiny_gpt2_path), "winobias", str(out), student="lora", max_steps=2, batch_size=4,
                max_examples=40, max_length=32, progress=False, device="cpu", learning_rate=1e-2)
    assert s["global_step"] == 2 and s["method"] == "cda"
    assert s["original_examples"] == 40 and s["counterfactual_examples"] == 40 and s["examples"] == 80
    assert json.loads((out / "cda.json").read_text())["global_step"] == 2
    assert (out / "adapter" / "adapter_config.json").exists()
    assert main(["eval", "crows-pairs", "--model", str(out / "student"), "--limit", "6", "--dtype", "float32",
                 "--no-progress", "--out", str(tmp_path / "eval")]) == 0
    assert json.loads((tmp_path / "eval" / "metrics.json").read_text())["meta"]["n_items"] == 6


def test_cda_full_fine_tuning_of_a_masked_lm_via_cli(tiny_bert_path, tmp_path, capsys):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("the man said that he was tired\nthe table is round\nher sister is a doctor\n")
    args = ["cda", "--model", str(tiny_bert_path), "--data", str(corpus), "--out", str(tmp_path / "cda"),
            "--student", "full", "-o", "max_steps=1", "-o", "batch_size=2", "-o", "progress=false", "-o", "device=cpu"]
    assert main(args) == 0
    s = json.loads((tmp_path / "cda" / "cda.json").read_text())
    assert s["student_kind"] == "full" and s["masked_lm"] and s["counterfactual_examples"] == 2
    assert (tmp_path / "cda" / "student" / "config.json").exists()
    assert main(args[:-2] + ["-o", "temperature=2"]) == 2
    assert "unknown cda option(s) temperature" in capsys.readouterr().err
