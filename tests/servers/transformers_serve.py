"""Start and stop ``transformers serve`` (transformers 5.x, extra ``serving``) on loopback.

It serves a local model directory offline with an OpenAI-compatible API (chat completions; it
ignores ``echo``/``logprobs`` on ``/v1/completions``). The model is pinned at start-up, so the
``model`` field of every request must be the directory path.
"""
from __future__ import annotations

import importlib.util
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx


def missing_reason() -> str | None:
    """Why the server cannot start here, or None."""
    for mod in ("fastapi", "uvicorn", "openai"):
        if importlib.util.find_spec(mod) is None:
            return f"{mod} not installed: pip install 'transformers[serving]'"
    if shutil.which("transformers") is None and not Path(sys.executable).with_name("transformers").exists():
        return "the `transformers` CLI is not on PATH"
    return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class TransformersServe:
    def __init__(self, model_dir: str | Path, port: int | None = None, log_path: str | Path | None = None,
                 threads: int | None = None, extra_args: list[str] | None = None):
        self.model_dir = str(model_dir)
        self.port = port or free_port()
        self.log_path = Path(log_path) if log_path else None
        self.threads = threads
        self.extra_args = list(extra_args or [])  # e.g. ["--continuous-batching"]
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    @property
    def spec(self) -> str:
        return f"openai:{self.url}#{self.model_dir}"

    def start(self, timeout: float = 240.0) -> "TransformersServe":
        exe = Path(sys.executable).with_name("transformers")
        cmd = [str(exe) if exe.exists() else "transformers", "serve", self.model_dir, "--host", "127.0.0.1",
               "--port", str(self.port), "--device", "cpu", "--dtype", "float32", "--log-level", "warning", *self.extra_args]
        env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
        if self.threads:
            env["OMP_NUM_THREADS"] = str(self.threads)
        out = open(self.log_path, "ab") if self.log_path else subprocess.DEVNULL
        self.proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"transformers serve exited with {self.proc.returncode}; log: {self.log_path}")
            try:
                if httpx.get(f"http://127.0.0.1:{self.port}/health", timeout=2, trust_env=False).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        self.stop()
        raise RuntimeError(f"transformers serve did not become healthy in {timeout:.0f}s; log: {self.log_path}")

    def kill(self) -> None:
        """SIGKILL the server (its process group): an abrupt crash, connections dropped."""
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(30)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.kill()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()
