"""vLLM offline-engine backend (optional extra: ``pip install 'fairdistill[vllm]'``).

Model string ``vllm:PATH`` (a local directory or hub id). vLLM is imported only when this backend
is built, so nothing else in fairdistill needs it. Engine options pass straight through:
``tensor_parallel_size``, ``pipeline_parallel_size``, ``data_parallel_size``,
``distributed_executor_backend`` (``mp`` on one node, ``ray`` across nodes), ``dtype``,
``gpu_memory_utilization``, ``max_model_len``, ``quantization``, ``enforce_eager``, ``seed``,
``trust_remote_code`` and any other ``vllm.LLM`` keyword given as ``engine_kwargs``. The parallel
layout is not part of a run's identity: a run started on 2 GPUs resumes on 8.

- ``generate``: ``LLM.chat`` with one ``SamplingParams`` per request (greedy at temperature 0).
- log-likelihoods: the prompt is tokenised here exactly as the in-process backend does
  (context, then context + continuation; trailing context whitespace moves to the continuation),
  sent as token ids, and scored with ``prompt_logprobs``; so token boundaries are exact.
"""
from __future__ import annotations

from typing import Any, Sequence

from ..errors import CapabilityError, UserError
from ..registry import BACKENDS
from .base import Backend, GenerationRequest, GenerationResult, encode_pair

ENGINE_KEYS = ("tensor_parallel_size", "pipeline_parallel_size", "data_parallel_size", "distributed_executor_backend",
               "dtype", "gpu_memory_utilization", "max_model_len", "quantization", "enforce_eager", "seed",
               "trust_remote_code", "max_num_seqs", "swap_space", "download_dir", "tokenizer")
INT_KEYS = ("tensor_parallel_size", "pipeline_parallel_size", "data_parallel_size", "max_model_len", "max_num_seqs",
            "seed")


@BACKENDS.register("vllm")
class VLLMBackend(Backend):
    def __init__(self, llm, *, name: str, engine_options: dict[str, Any]):
        self.llm = llm
        self.name = name
        self.model_type = "causal"
        self.engine_options = engine_options
        self.tokenizer = llm.get_tokenizer()

    @classmethod
    def from_spec(cls, target: str, *, engine_kwargs: dict[str, Any] | None = None, **options: Any) -> "VLLMBackend":
        try:
            import vllm
        except ImportError:
            raise UserError("vllm is not installed: pip install 'fairdistill[vllm]'") from None
        from .builtin import BUILTIN_MODELS, resolve_builtin

        path = resolve_builtin(target) if target in BUILTIN_MODELS else target
        kw = {k: options[k] for k in ENGINE_KEYS if options.get(k) is not None}
        if kw.get("dtype") in ("fp32", "bf16", "fp16"):
            kw["dtype"] = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}[kw["dtype"]]
        for k in INT_KEYS:
            if k in kw:
                try:
                    kw[k] = int(kw[k])
                except (TypeError, ValueError):
                    raise UserError(f"vllm option {k}={kw[k]!r} is not an integer") from None
        if kw.get("distributed_executor_backend") not in (None, "mp", "ray", "uni", "external_launcher"):
            raise UserError(f"unknown distributed_executor_backend {kw['distributed_executor_backend']!r}; "
                            "use mp, ray, uni or external_launcher")
        if "gpu_memory_utilization" in kw:
            kw["gpu_memory_utilization"] = float(kw["gpu_memory_utilization"])
        kw.update(engine_kwargs or {})
        try:
            llm = vllm.LLM(model=path, **kw)
        except (OSError, ValueError) as e:
            msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise UserError(f"vLLM cannot load {target!r}: {msg}") from None
        return cls(llm, name=target, engine_options=kw)

    def describe(self) -> dict[str, Any]:
        opts = {k: v for k, v in self.engine_options.items() if k in ("dtype", "quantization", "max_model_len")}
        return {"backend": "vllm", "model": self.name, "model_type": "causal", **opts}

    @property
    def can_chat(self) -> bool:
        return bool(getattr(self.tokenizer, "chat_template", None))

    @property
    def can_score(self) -> bool:
        return True

    # -- generation -----------------------------------------------------------------------------
    def generate(self, requests: Sequence[GenerationRequest]) -> list[GenerationResult]:
        from vllm import SamplingParams

        if not self.can_chat:
            raise CapabilityError(f"{self.name} has no chat template; chat benchmarks and methods need one")
        params = []
        for r in requests:
            kw: dict[str, Any] = dict(max_tokens=int(r.max_new_tokens), temperature=float(r.temperature),
                                      stop=list(r.stop) or None)
            if r.temperature and r.temperature > 0:
                kw.update(top_p=float(r.top_p), seed=r.seed)
            params.append(SamplingParams(**kw))
        outs = self.llm.chat([list(r.messages) for r in requests], params, use_tqdm=False)
        res = []
        for o in outs:
            c = o.outputs[0]
            res.append(GenerationResult(text=c.text.strip(), prompt_tokens=len(o.prompt_token_ids or []),
                                        completion_tokens=len(c.token_ids)))
        return res

    # -- log-likelihood -------------------------------------------------------------------------
    def _encode(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=True)["input_ids"]

    def _encode_pair(self, context: str, continuation: str) -> tuple[list[int], list[int]]:
        return encode_pair(self.tokenizer, context, continuation)

    def _prompt_logprobs(self, seqs: list[list[int]]) -> list[list[float | None]]:
        from vllm import SamplingParams

        sp = SamplingParams(max_tokens=1, temperature=0.0, prompt_logprobs=1)
        outs = self.llm.generate([{"prompt_token_ids": s} for s in seqs], sp, use_tqdm=False)
        res = []
        for s, o in zip(seqs, outs):
            row: list[float | None] = []
            for tok, d in zip(s, o.prompt_logprobs or []):
                row.append(None if d is None else float(d[tok].logprob))
            res.append(row)
        return res

    def _start(self) -> int:
        t = self.tokenizer
        return t.bos_token_id if t.bos_token_id is not None else t.eos_token_id

    def loglikelihood_choices(self, requests: Sequence[tuple[str, Sequence[str]]]) -> list[list[float]]:
        seqs, spans = [], []
        for context, conts in requests:
            for c in conts:
                ctx, cont = self._encode_pair(context, c)
                if not cont:
                    raise UserError(f"empty continuation {c!r} after tokenisation")
                ctx = ctx or [self._start()]
                seqs.append(ctx + cont)
                spans.append(len(cont))
        lps = self._prompt_logprobs(seqs)
        flat = [float(sum(x for x in row[-n:] if x is not None)) for row, n in zip(lps, spans)]
        it = iter(flat)
        return [[next(it) for _ in conts] for _, conts in requests]

    def continuation_lengths(self, requests):
        return [[len(self._encode_pair(ctx, c)[1]) for c in conts] for ctx, conts in requests]

    def sequence_logprob(self, texts: Sequence[str]) -> list[tuple[float, int]]:
        seqs = [[self._start()] + self.tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]
        return [(float(sum(x for x in row[1:] if x is not None)), len(s) - 1)
                for row, s in zip(self._prompt_logprobs(seqs), seqs)]

    def next_token_logprobs(self, contexts: Sequence[str], candidates: Sequence[Sequence[str]]) -> list[list[float]]:
        seqs, keys = [], []
        for i, (context, cands) in enumerate(zip(contexts, candidates)):
            for c in cands:
                ctx, cont = self._encode_pair(context, c)
                seqs.append((ctx or [self._start()]) + cont[:1])
                keys.append(i)
        lps = self._prompt_logprobs(seqs)
        out: list[list[float]] = [[] for _ in contexts]
        for i, row in zip(keys, lps):
            out[i].append(float(row[-1] or 0.0))
        return out
