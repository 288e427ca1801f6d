"""SentenceDebias and INLP: the projection removes the estimated directions and nothing else, the
estimators find a planted direction, the hook acts inside the tiny models, and both run end to end."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from doubles import ServedBackend
from fairdistill.cli import main
from fairdistill.errors import CapabilityError, UserError
from fairdistill.interventions import applied, get_intervention
from fairdistill.interventions.projection import hook, project_out


@pytest.fixture(autouse=True)
def _own_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("FAIRDISTILL_CACHE", str(tmp_path / "cache"))


def test_projection_removes_the_directions_and_keeps_their_complement():
    rng = np.random.default_rng(0)
    basis, _ = np.linalg.qr(rng.normal(size=(16, 3)))  # orthonormal columns
    h = rng.normal(size=(50, 16))
    out = project_out(h, basis)
    assert np.abs(out @ basis).max() < 1e-12  # nothing left along the removed directions
    comp = h - (h @ basis) @ basis.T  # built by hand: each vector's part orthogonal to the span
    inside = rng.normal(size=(5, 3)) @ basis.T  # vectors inside the span vanish
    assert np.allclose(out, comp)
    assert np.abs(project_out(inside, basis)).max() < 1e-12
    ortho = comp[:5]  # vectors already orthogonal to the span pass unchanged
    assert np.allclose(project_out(ortho, basis), ortho)
    # the same on torch tensors (the hook's path)
    assert torch.allclose(project_out(torch.tensor(h), torch.tensor(basis)), torch.tensor(out))


def test_sentence_debias_recovers_a_planted_direction():
    rng = np.random.default_rng(1)
    d = 12
    v = rng.normal(size=d)
    v /= np.linalg.norm(v)
    base = rng.normal(size=(200, d))
    s = rng.uniform(1, 2, size=(200, 1))
    a, b = base + s * v + 0.01 * rng.normal(size=(200, d)), base - s * v
    basis, info = get_intervention("sentence-debias").fit(a, b, np.ones(200))
    assert basis.shape == (d, 1) and abs(float(basis[:, 0] @ v)) > 0.999
    assert info["explained_variance"][0] > 0.99


def test_inlp_removes_a_planted_direction_until_chance():
    rng = np.random.default_rng(2)
    d = 10
    v = np.zeros(d)
    v[3] = 1.0
    base = rng.normal(size=(300, d))
    a, b = base + 2 * v, base - 2 * v  # first sentences lean male along v, their twins female
    iv = get_intervention("inlp", iterations=3)
    basis, info = iv.fit(a, b, np.ones(300, dtype=int))
    assert abs(basis[3, 0]) > 0.95  # the first classifier's direction is the planted one
    acc = info["heldout_accuracy_per_iteration"]
    assert acc[0] > 0.95 and acc[1] < 0.65  # once it is projected out, the classes are inseparable
    assert np.allclose(basis.T @ basis, np.eye(basis.shape[1]))


@pytest.mark.parametrize("model,layer", [("tiny_gpt2", "final"), ("tiny_gpt2", "0"), ("tiny_bert", "auto"),
                                         ("tiny_llama_chat", "-1")])
def test_hook_projects_the_hidden_states_in_the_model(model, layer, request):
    be = request.getfixturevalue(model)
    ids = torch.tensor([be.tokenizer("the nurse said that she was tired", add_special_tokens=True)["input_ids"]])
    iv_layer = layer if layer != "auto" else "-1"

    def capture():
        seen = []
        handle = hook(be.model, iv_layer, lambda h: seen.append(h.detach().clone()) or h)
        with torch.no_grad():
            be.model(input_ids=ids)
        handle.remove()
        return seen[0][0].double().numpy()

    plain = capture()
    with applied(be, "sentence-debias", {"layer": layer, "k": 2, "max_pairs": 200}) as iv:
        projected = capture()  # the capture hook runs after the intervention's on the same module
        basis = iv.basis.astype(np.float64)
        assert iv.info["removed_dimensions"] == 2 and iv.info["layer"] == iv_layer
    assert np.abs(projected @ basis).max() < 1e-4 * np.abs(plain).max()
    assert np.allclose(projected, plain - (plain @ basis) @ basis.T, atol=1e-4)  # the complement is untouched
    assert np.allclose(capture(), plain)  # detached


def test_estimate_is_cached_per_model_and_options(tiny_gpt2, tmp_path):
    with applied(tiny_gpt2, "inlp", {"iterations": 2, "max_pairs": 100}) as iv:
        first, info = iv.basis.copy(), dict(iv.info)
    assert not info["cached"] and (tmp_path / "cache" / "interventions").is_dir()
    with applied(tiny_gpt2, "inlp", {"iterations": 2, "max_pairs": 100}) as iv:
        assert iv.info["cached"] and np.array_equal(iv.basis, first)
    with applied(tiny_gpt2, "inlp", {"iterations": 3, "max_pairs": 100}) as iv:
        assert not iv.info["cached"] and iv.basis.shape[1] == 3


def test_parallel_runs_estimate_once_and_share_the_basis(tiny_gpt2, monkeypatch):
    """Two runs that need the same estimate at once (a study's Ray workers): one estimates, the other
    waits for its file and loads the same basis instead of estimating again."""
    import threading
    import time

    from fairdistill.interventions import get_intervention, projection

    calls = []

    def slow_representations(backend, texts, layer):
        calls.append(len(texts))
        time.sleep(0.5)  # long enough for the other run to ask meanwhile
        return np.random.default_rng(len(calls)).normal(size=(len(texts), 8))

    monkeypatch.setattr(projection, "representations", slow_representations)
    ivs = [get_intervention("sentence-debias", max_pairs=50) for _ in range(2)]
    threads = [threading.Thread(target=iv.estimate, args=(tiny_gpt2,)) for iv in ivs]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(calls) == 1
    assert sorted(iv.info["cached"] for iv in ivs) == [False, True]
    assert np.array_equal(ivs[0].basis, ivs[1].basis)


def test_a_study_keeps_its_own_estimate_for_resumes_elsewhere(tiny_gpt2, tmp_path, monkeypatch):
    """With a study's folder set, the estimate is kept there (copied from the user cache when only that has it)
    and found there on a machine whose user cache is empty: the same basis, not a new estimate."""
    from fairdistill.interventions.projection import estimates_dir

    opts = {"iterations": 2, "max_pairs": 100}
    with applied(tiny_gpt2, "inlp", opts) as iv:  # the user cache only
        first = iv.basis.copy()
    token = estimates_dir.set(tmp_path / "study" / "base" / "interventions")
    try:
        with applied(tiny_gpt2, "inlp", opts) as iv:  # copied into the study
            assert iv.info["cached"] and np.array_equal(iv.basis, first)
        kept = list((tmp_path / "study" / "base" / "interventions").glob("inlp-*.npz"))
        assert len(kept) == 1 and kept[0].with_suffix(".json").exists()
        monkeypatch.setenv("FAIRDISTILL_CACHE", str(tmp_path / "elsewhere"))  # another machine
        with applied(tiny_gpt2, "inlp", opts) as iv:
            assert iv.info["cached"] and np.array_equal(iv.basis, first)
        assert not (tmp_path / "elsewhere" / "interventions").exists()
        with applied(tiny_gpt2, "sentence-debias", {"max_pairs": 100}) as iv:  # estimated: into the study
            assert not iv.info["cached"]
        assert len(list((tmp_path / "study" / "base" / "interventions").glob("sentence-debias-*.npz"))) == 1
    finally:
        estimates_dir.reset(token)


def test_bad_options_and_backends_are_one_line(tiny_gpt2):
    with pytest.raises(UserError, match="layer 'middle'"):
        get_intervention("sentence-debias", layer="middle")
    with pytest.raises(UserError, match="layer 7 does not exist: the model has 2 blocks"):
        with applied(tiny_gpt2, "sentence-debias", {"layer": 7, "max_pairs": 20}):
            pass
    with pytest.raises(UserError, match="corpus not found"):
        with applied(tiny_gpt2, "inlp", {"corpus": "/no/such/file.txt"}):
            pass
    with pytest.raises(CapabilityError, match="'inlp' cannot run on the openai backend: it needs a forward hook"):
        with applied(ServedBackend("openai"), "inlp"):
            pass


@pytest.mark.parametrize("model", ["tiny_bert_path", "tiny_gpt2_path"])
@pytest.mark.parametrize("intervention", ["sentence-debias", "inlp"])
def test_crows_pairs_end_to_end_cli(model, intervention, request, tmp_path):
    path = request.getfixturevalue(model)
    base = ["eval", "crows-pairs", "--model", str(path), "--limit", "10", "--dtype", "float32", "--no-progress"]
    assert main(base + ["--out", str(tmp_path / "plain")]) == 0
    assert main(base + ["--out", str(tmp_path / "iv"), "--intervention", intervention,
                        "--intervention-option", "max_pairs=300"]) == 0
    meta = json.loads((tmp_path / "iv" / "metrics.json").read_text())["meta"]
    stats = meta["backend_stats"]["intervention"]
    assert stats["intervention"] == intervention and stats["cost"]["extra_forward_passes"] == 0
    assert stats["estimate"]["pairs"] == 300
    cfg = json.loads((tmp_path / "iv" / "config.json").read_text())
    assert cfg["identity"]["model"]["intervention"] == {"intervention": intervention, "max_pairs": 300}

    def scores(d):
        return [json.loads(x)["score_more"] for x in (tmp_path / d / "results.jsonl").read_text().splitlines()]

    assert len(scores("iv")) == 10 and scores("iv") != pytest.approx(scores("plain"), abs=1e-4)


def test_a_run_never_mixes_answers_of_two_estimates(tiny_gpt2, tiny_gpt2_path, tmp_path, monkeypatch):
    """The basis's SHA-256 keys the response cache and is recorded in config.json: a run resumed with another
    estimate stops in one line, a run started again recomputes rather than reading the other basis's
    answers, and a finished run from before fingerprints were kept is replayed from its old entries."""
    from fairdistill.backends.cache import CachingBackend
    from fairdistill.interventions.projection import _Projection, basis_sha256, estimates_dir
    from fairdistill.runner import RunSpec, execute

    kept = tmp_path / "study" / "base" / "interventions"
    token = estimates_dir.set(kept)
    spec = RunSpec(model=str(tiny_gpt2_path), benchmark="crows-pairs", limit=6, intervention="sentence-debias",
                   intervention_options={"max_pairs": 100}, out=tmp_path / "run")

    def go(s=spec, db="c.sqlite"):
        cached = CachingBackend(tiny_gpt2, tmp_path / db)
        _, m = execute(s, cached, show_progress=False)
        results = [json.loads(x) for x in (s.out / "results.jsonl").read_text().splitlines()]
        return m["meta"], [r["score_more"] for r in results], cached

    def lines(n):  # the run interrupted after n items
        res = (spec.out / "results.jsonl").read_text().splitlines()[:n]
        (spec.out / "results.jsonl").write_text("".join(x + "\n" for x in res))
        (spec.out / "metrics.json").unlink()

    try:
        meta, first, _ = go()
        (npz,) = kept.glob("sentence-debias-*.npz")
        with np.load(npz) as z:
            basis_a = z["basis"]
        fp_a = basis_sha256(basis_a)
        cfg = json.loads((spec.out / "config.json").read_text())
        assert cfg["intervention_fingerprint"] == fp_a == meta["backend_stats"]["intervention"]["estimate"]["basis_sha256"]
        assert "intervention_fingerprint" not in json.dumps(cfg["identity"])  # the run's identity is unchanged
        lines(3)
        meta, again, _ = go()  # same estimate: resumed from the cache
        assert again == first and meta["cache_misses_this_session"] == 0
        # the kept estimate replaced by another basis (lost, estimated anew elsewhere), mid-run
        lines(3)
        other = np.roll(basis_a, 1, axis=0)
        np.savez(npz, basis=other)
        with pytest.raises(UserError, match=f"started with another sentence-debias estimate \\(basis {fp_a}, now "
                                            f"{basis_sha256(other)}\\).*delete the folder"):
            go()
        # started again: every answer is computed with the new basis, none read from the old one's entries
        import shutil

        shutil.rmtree(spec.out)
        meta, fresh, _ = go()
        assert meta["cache_hits_this_session"] == 0 and meta["cache_misses_this_session"] > 0
        assert fresh != pytest.approx(first, abs=1e-6)
        assert json.loads((spec.out / "config.json").read_text())["intervention_fingerprint"] == basis_sha256(other)

        # before fingerprints were kept: entries keyed without one (a cache of their own), config.json recording none
        monkeypatch.setattr(_Projection, "fingerprint", lambda self: None)
        old = spec.model_copy(update={"out": tmp_path / "old", "limit": 4})
        _, legacy, _ = go(old, "old.sqlite")
        assert "intervention_fingerprint" not in json.loads((old.out / "config.json").read_text())
        monkeypatch.undo()
        monkeypatch.setenv("FAIRDISTILL_CACHE", str(tmp_path / "cache"))
        (old.out / "results.jsonl").unlink()  # a fresh machine: the finished run is replayed, not recomputed
        meta, replayed, cached = go(old, "old.sqlite")
        assert replayed == legacy and meta["cache_misses_this_session"] == 0 and not cached.legacy_keys
        assert meta["backend_stats"]["intervention"]["fingerprint"].startswith("not recorded")
        assert "intervention_fingerprint" not in json.loads((old.out / "config.json").read_text())
        (old.out / "results.jsonl").unlink()
        (old.out / "metrics.json").unlink()  # unfinished (config.json only): started again with this estimate
        meta, _, _ = go(old, "old.sqlite")
        assert meta["cache_hits_this_session"] == 0
    finally:
        estimates_dir.reset(token)
