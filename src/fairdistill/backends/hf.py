"""In-process Hugging Face transformers backend (causal and masked LMs, CPU or GPU).

Model strings: a local directory, a hub id, or a built-in offline model name (``smollm2``,
``gemma3-270m``; see :mod:`fairdistill.backends.builtin`). ``trust_remote_code`` is off unless the
user turns it on; safetensors weights are preferred.
"""
from __future__ import annotations

import math
import os
from contextlib import contextmanager
from typing import Any, Iterator, Sequence

from ..errors import CapabilityError, UserError
from ..machine import native_bf16  # noqa: F401  (importable from here too)
from ..registry import BACKENDS
from .base import Backend, GenerationRequest, GenerationResult, encode_pair


def _resolve_device(device: str) -> str:
    from ..distributed import local_device

    return local_device(device)  # under torchrun / accelerate launch: this rank's GPU


def _resolve_dtype(dtype: str, device: str):
    import torch

    if dtype == "auto":
        return torch.bfloat16 if native_bf16(device) else torch.float32
    try:
        return {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16,
                "bf16": torch.bfloat16, "float16": torch.float16, "fp16": torch.float16}[dtype]
    except KeyError:
        raise UserError(f"unknown dtype {dtype!r}; use auto, float32, bfloat16 or float16") from None


#: log-likelihood margin (nats) under which a bf16 argmax is re-checked in float32; chosen from the
#: bf16-vs-fp32 disagreements measured by speed/model_speed.py (see README "Precision")
DEFAULT_RESCORE_MARGIN = 0.2

#: the same for the first generated token (in a short answer: the answer letter), in nats. bf16 logits of a
#: 1.5B model lie on a grid of 0.0625-0.125 nats, so bf16 top-two margins are 0, 0.0625, 0.125, ...; on 84
#: BBQ prompts to Qwen2.5-Coder-1.5B every bf16/float32 disagreement had a bf16 margin of exactly 0, and
#: float32 moved no margin by more than 0.114 (speed/generation_speed.py). 0.1 checks the exact ties and
#: the first grid step: 14% of answers where 0.2 checked 46%, so the default costs 1.2-1.4x pure bf16, not 2x
DEFAULT_FIRST_TOKEN_MARGIN = 0.1


@BACKENDS.register("hf")
class HFBackend(Backend):
    """transformers model + tokenizer. Batches every request kind."""

    def __init__(
        self,
        model,
        tokenizer,
        *,
        name: str = "hf-model",
        batch_size: int = 16,
        max_batch_tokens: int = 8192,
        device: str | None = None,
        shared_prefix: bool = True,
        rescore_margin: float = 0.0,
        weights_dir: str | None = None,
        share_prefixes: bool = True,
        first_token_margin: float = DEFAULT_FIRST_TOKEN_MARGIN,
    ):
        import torch

        self.model = model
        self.tokenizer = tokenizer
        self.name = name
        # generation: a prompt prefix several rows share (rotations of one question) is computed once
        self.share_prefixes = share_prefixes
        self.batch_size = batch_size
        self.max_batch_tokens = max_batch_tokens
        self.shared_prefix = shared_prefix
        import inspect

        # transformers >= 5.x renamed the forward argument `past_key_values` to `cache`
        params = inspect.signature(model.forward).parameters
        self.cache_kw = "cache" if "cache" in params else "past_key_values"
        self.device = device or str(next(model.parameters()).device)
        self.model_type = "masked" if _is_masked(model) else "causal"
        self.model.eval()
        if tokenizer.pad_token_id is None:
            # Padding id only fills masked positions; any valid id will do.
            tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
        self._torch = torch
        # bf16/fp16 models: options whose top-two log-likelihood margin is below this are re-scored
        # in float32 (see backends/precision.py); 0 turns it off
        self.rescore_margin = float(rescore_margin) if model.dtype != torch.float32 else 0.0
        # greedy generation: first tokens whose bf16 top-two margin is below this are decided in float32
        # (only while rescore_margin is on: rescore_margin=0 means pure bf16 everywhere)
        self.first_token_margin = float(first_token_margin)
        self._weights_dir = weights_dir
        self._fp32 = None
        self.n_scored = self.n_rescored = 0
        self.n_first_fp32 = self.n_regenerated = 0
        #: a model intervention attached for a run (see fairdistill.interventions.applied)
        self.intervention = None
        # the start tokens (BOS, [CLS]) the tokenizer puts before plain text: an intervention that
        # prepends a prefix to a text puts it after them
        with_special = tokenizer("a", add_special_tokens=True)["input_ids"]
        special = set(tokenizer.all_special_ids)
        self._lead_ids = []
        for t in with_special:
            if t not in special:
                break
            self._lead_ids.append(t)

    # -- construction ---------------------------------------------------------------------------
    @classmethod
    def from_spec(
        cls,
        target: str,
        *,
        device: str = "auto",
        dtype: str = "auto",
        batch_size: int = 16,
        trust_remote_code: bool = False,
        rescore_margin: float = DEFAULT_RESCORE_MARGIN,
        share_prefixes: bool = True,
        first_token_margin: float = DEFAULT_FIRST_TOKEN_MARGIN,
        **_: Any,
    ) -> "HFBackend":
        from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForMaskedLM, AutoTokenizer

        import torch

        from .builtin import BUILTIN_MODELS, half_precision_copy, resolve_builtin, resolve_gguf_file

        cached = True  # a folder fairdistill converted into its cache (it may add a bf16 copy beside)
        if target in BUILTIN_MODELS:
            path = resolve_builtin(target)
        elif target.lower().endswith(".gguf") and os.path.isfile(target):
            path = resolve_gguf_file(target)
        else:
            path, cached = target, False
        if not (os.path.isdir(path) or _looks_like_hub_id(path)):
            raise UserError(f"cannot load model {target!r}: no such directory, .gguf file, built-in name or hub id")
        dev = _resolve_device(device)
        torch_dtype = _resolve_dtype(dtype, dev)
        # casting the float32 cache on load maps all of it (peak RSS = float32 + bf16 sizes); a bf16
        # copy loads memory-mapped instead
        load_from = half_precision_copy(path, torch_dtype) if cached and torch_dtype != torch.float32 else path
        try:
            config = AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code)
            arch = " ".join(config.architectures or [])
            auto = AutoModelForMaskedLM if "MaskedLM" in arch else AutoModelForCausalLM
            tok = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
            model = auto.from_pretrained(
                load_from, dtype=torch_dtype, trust_remote_code=trust_remote_code
            ).to(dev)
        except (OSError, ValueError, KeyError) as e:
            msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise UserError(f"cannot load model {target!r}: {msg}") from None
        return cls(model, tok, name=target, batch_size=batch_size, device=dev, rescore_margin=rescore_margin,
                   weights_dir=path if os.path.isdir(path) else None, share_prefixes=_flag(share_prefixes),
                   first_token_margin=float(first_token_margin))

    def describe(self) -> dict[str, Any]:
        out = {"backend": "hf", "model": self.name, "model_type": self.model_type,
               "dtype": str(self.model.dtype).replace("torch.", "")}
        if self.rescore_margin:
            out["fp32_rescore_margin"] = self.rescore_margin
        if self.intervention is not None:
            out["intervention"] = self.intervention.identity()
        return out

    def stats(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.rescore_margin:
            out.update({"loglik_requests": self.n_scored, "rescored_fp32": self.n_rescored,
                        "first_token_fp32": self.n_first_fp32, "regenerated": self.n_regenerated,
                        "first_token_margin": self.first_token_margin})
        if self.intervention is not None:
            out["intervention"] = self.intervention.stats()
        return out

    # -- capabilities ---------------------------------------------------------------------------
    def capabilities(self) -> set[str]:
        caps = {"model_object"}
        if self._rescoring():
            caps.add("adjusted_logits")
        if self.model_type == "masked":
            caps.add("token_pll")
        elif self.can_chat:
            caps |= {"chat_template", "chat_choice_logprobs"}
        return caps

    def model_and_tokenizer(self):
        return self.model, self.tokenizer

    def model_logits(self, ids):
        """The model's next-token scores for a batch of token ids (``[batch, seq, vocab]``), as every other
        request kind sees them: with a rescoring intervention attached, its log-probabilities (valid
        logits: their softmax is the debiased distribution). For consumers of the bare model object
        (lm-evaluation-harness) when ``"adjusted_logits"`` is in ``capabilities()``."""
        torch = self._torch
        with torch.inference_mode():
            logits = self.model(input_ids=ids.to(self.device)).logits
            if not self._rescoring():
                return logits
            n, T = ids.shape
            lps = self._scored(ids, torch.ones_like(ids), [list(range(T))] * n, list(logits),
                               [self._lead_of(row.tolist()) for row in ids])
        return torch.stack(lps)

    def logits_processors(self, prompts: list[list[int]]) -> list:
        """transformers logits processors an attached intervention adds to a ``generate`` call over
        ``prompts`` (token ids, unpadded); for consumers of the bare model object, as ``model_logits``."""
        if not self._rescoring():
            return []
        proc = self.intervention.logits_processor(self, prompts)
        return [proc] if proc is not None else []

    @contextmanager
    def float32(self) -> Iterator[None]:
        """The model computes in float32 while the block runs (the checkpoint's exact float32 weights where the
        backend loaded a converted folder), then returns to its dtype; near-tie re-scoring pauses meanwhile."""
        torch = self._torch
        if self.model.dtype == torch.float32:
            yield
            return
        from .precision import Float32Weights

        dtype, margin = self.model.dtype, self.rescore_margin
        (self._fp32 or Float32Weights(self.model, self._weights_dir)).upcast()
        self.rescore_margin = 0.0
        try:
            yield
        finally:
            self.model.to(dtype)
            self.rescore_margin = margin

    # -- where logits become log-probabilities (rescoring interventions plug in here) -----------
    def _rescoring(self) -> bool:
        return self.intervention is not None and self.intervention.rescores

    def _scored(self, ids, att, positions: list[list[int]], logits_rows, lead: list[int]):
        """Log-softmax of ``logits_rows[r]`` (the logits at ``positions[r]`` of row r of the padded batch
        ``ids``), adjusted by a rescoring intervention when one is attached."""
        lps = [self._torch.log_softmax(x.float(), -1) for x in logits_rows]
        if self._rescoring():
            lps = self.intervention.adjust_logprobs(self, ids, att, positions, lps, lead)
        return lps

    def _lead_of(self, ids: Sequence[int]) -> int:
        """How many of the tokenizer's own start tokens (BOS, [CLS]) begin ``ids``."""
        n = len(self._lead_ids)
        return n if n and list(ids[:n]) == self._lead_ids else 0

    @property
    def can_chat(self) -> bool:
        return self.model_type == "causal" and bool(getattr(self.tokenizer, "chat_template", None))

    @property
    def can_score(self) -> bool:
        return True

    # -- tokenisation ---------------------------------------------------------------------------
    def _encode(self, text: str) -> list[int]:
        # The tokenizer's own default decides BOS (Gemma/Llama add it, GPT-2 style ones do not),
        # as lm-evaluation-harness does for these families.
        return self.tokenizer(text, add_special_tokens=True)["input_ids"]

    def _encode_pair(self, context: str, continuation: str) -> tuple[list[int], list[int]]:
        return encode_pair(self.tokenizer, context, continuation)

    # -- log-likelihood -------------------------------------------------------------------------
    def loglikelihood_choices(self, requests: Sequence[tuple[str, Sequence[str]]]) -> list[list[float]]:
        out = self._loglikelihood_choices(requests)
        self.n_scored += len(out)
        if self.rescore_margin > 0:
            near = [i for i, row in enumerate(out) if len(row) > 1 and _top2_margin(row) < self.rescore_margin]
            if near:
                with self._fp32_weights().active():
                    fixed = self._loglikelihood_choices([requests[i] for i in near])
                for i, row in zip(near, fixed):
                    out[i] = row
                self.n_rescored += len(near)
        return out

    def _loglikelihood_choices(self, requests: Sequence[tuple[str, Sequence[str]]]) -> list[list[float]]:
        flat: list[tuple[int, int, list[int], list[int]]] = []
        for i, (context, conts) in enumerate(requests):
            for j, c in enumerate(conts):
                ctx, cont = self._encode_pair(context, c)
                if not cont:
                    raise UserError(f"empty continuation {c!r} after tokenisation")
                flat.append((i, j, ctx, cont))
        out = [[0.0] * len(conts) for _, conts in requests]
        if self.model_type == "masked":
            # The tokenizer wraps text in [CLS] ... [SEP]: score the continuation's own tokens,
            # with the closing special tokens present but unscored.
            seqs, positions = [], []
            for context, conts in requests:
                for c in conts:
                    whole, pos = self._masked_span(context, c)
                    seqs.append(whole)
                    positions.append(pos)
            scores = self._pll_positions(seqs, positions)
            k = 0
            for i, (_, conts) in enumerate(requests):
                for j in range(len(conts)):
                    out[i][j] = scores[k][0]
                    k += 1
            return out
        if self.shared_prefix and not self._rescoring():  # a rescoring intervention needs every position's full pass
            grouped: list[tuple[list[int], list[list[int]]]] = [([], []) for _ in requests]
            for i, _, ctx, cont in flat:
                grouped[i][1].append(cont)
                grouped[i] = (ctx, grouped[i][1])
            for i, row in enumerate(self._causal_choice_scores(grouped)):
                out[i] = row
            return out
        scores = self._causal_span_scores([(ctx, cont) for _, _, ctx, cont in flat],
                                          [self._lead_of(ctx) if ctx else 1 for _, _, ctx, _ in flat])
        for (i, j, _, _), v in zip(flat, scores):
            out[i][j] = v
        return out

    def _causal_choice_scores(self, items: list[tuple[list[int], list[list[int]]]]) -> list[list[float]]:
        """Multiple choice with one forward pass per shared context.

        The contexts of a batch run once (left-padded, KV cache kept, logits for the last position
        only); the cache rows are then repeated per option and all options of all items run in
        one second pass. Each option costs its own tokens only, not the context again.
        """
        torch = self._torch
        res: list[list[float]] = [[] for _ in items]
        fixed = []
        for ctx, conts in items:
            if not ctx:
                start = self.tokenizer.bos_token_id
                ctx = [start if start is not None else self.tokenizer.eos_token_id]
            fixed.append((ctx, conts))
        # cost of an item ~ context + all option tokens; the batcher bounds the padded total
        costs = [len(c) + sum(len(o) for o in os_) for c, os_ in fixed]
        pad = self.tokenizer.pad_token_id
        with torch.inference_mode():
            for batch in self._batches(costs):
                ctx_max = max(len(fixed[k][0]) for k in batch)
                ids = torch.full((len(batch), ctx_max), pad, dtype=torch.long)
                att = torch.zeros((len(batch), ctx_max), dtype=torch.long)
                for r, k in enumerate(batch):
                    c = fixed[k][0]
                    ids[r, ctx_max - len(c):] = torch.tensor(c)
                    att[r, ctx_max - len(c):] = 1
                pos = (att.cumsum(-1) - 1).clamp(min=0)
                o1 = self.model(input_ids=ids.to(self.device), attention_mask=att.to(self.device),
                                position_ids=pos.to(self.device), use_cache=True, logits_to_keep=1)
                last_lp = torch.log_softmax(o1.logits[:, -1].float(), -1)
                rows = [(r, k, j) for r, k in enumerate(batch) for j in range(len(fixed[k][1]))]
                conts = [fixed[k][1][j] for _, k, j in rows]
                first = torch.stack([last_lp[r, conts[q][0]] for q, (r, _, _) in enumerate(rows)])
                totals = first.clone()
                L = max(len(c) for c in conts)
                if L > 1:
                    sel = torch.tensor([r for r, _, _ in rows], device=self.device)
                    cache = self.cache_of(o1)
                    cache.batch_select_indices(sel)
                    oids = torch.full((len(rows), L - 1), pad, dtype=torch.long)
                    oatt = torch.zeros((len(rows), L - 1), dtype=torch.long)
                    for q, c in enumerate(conts):
                        oids[q, : len(c) - 1] = torch.tensor(c[:-1]) if len(c) > 1 else oids[q, :0]
                        oatt[q, : len(c) - 1] = 1
                    att2 = torch.cat([att[sel.cpu()], oatt], dim=1)
                    ctx_len = att.sum(-1)[sel.cpu()]
                    pos2 = ctx_len[:, None] + torch.arange(L - 1)[None, :]
                    o2 = self.model(input_ids=oids.to(self.device), attention_mask=att2.to(self.device),
                                    position_ids=pos2.to(self.device), use_cache=True, **{self.cache_kw: cache})
                    lp2 = torch.log_softmax(o2.logits.float(), -1)
                    for q, c in enumerate(conts):
                        if len(c) > 1:
                            tgt = torch.tensor(c[1:], device=lp2.device)
                            totals[q] += lp2[q, : len(c) - 1].gather(1, tgt[:, None]).sum()
                for q, (_, k, _) in enumerate(rows):
                    res[k].append(float(totals[q]))
        return res

    def cache_of(self, output):
        """The KV cache a forward pass returned (its attribute name changed with transformers 5)."""
        return getattr(output, "cache", None) if self.cache_kw == "cache" else output.past_key_values

    def continuation_lengths(self, requests):
        if self.model_type == "masked":
            return [[len(self._masked_span(ctx, c)[1]) for c in conts] for ctx, conts in requests]
        return [[len(self._encode_pair(ctx, c)[1]) for c in conts] for ctx, conts in requests]

    def _masked_span(self, context: str, continuation: str) -> tuple[list[int], list[int]]:
        """Masked LM: token ids of context+continuation and the continuation's positions.

        The tokenizer wraps text in [CLS] ... [SEP]; the continuation's own tokens are scored,
        the closing special tokens stay in the input unscored.
        """
        special = set(self.tokenizer.all_special_ids)
        ctx = self._encode(context.rstrip())
        while ctx and ctx[-1] in special:
            ctx = ctx[:-1]
        whole = self._encode(context + continuation)
        end = len(whole)
        while end > len(ctx) and whole[end - 1] in special:
            end -= 1
        return whole, list(range(len(ctx), end))

    def _batches(self, lengths: list[int]):
        """Length-sorted batches bounded by batch size and padded token count."""
        order = sorted(range(len(lengths)), key=lambda k: -lengths[k])
        batch: list[int] = []
        for k in order:
            longest = lengths[batch[0]] if batch else lengths[k]
            if batch and (len(batch) >= self.batch_size or longest * (len(batch) + 1) > self.max_batch_tokens):
                yield batch
                batch = []
            batch.append(k)
        if batch:
            yield batch

    def _causal_span_scores(self, pairs: list[tuple[list[int], list[int]]], leads: list[int]) -> list[float]:
        """Sum of log P(cont tokens | ctx) for each (ctx, cont) token pair; ``leads[k]``: start tokens of pair k."""
        torch = self._torch
        seqs = []
        for ctx, cont in pairs:
            if not ctx:  # nothing to condition on: use EOS/BOS as the start token
                start = self.tokenizer.bos_token_id
                if start is None:
                    start = self.tokenizer.eos_token_id
                ctx = [start]
            seqs.append((ctx + cont, len(ctx), len(cont)))
        res = [0.0] * len(seqs)
        with torch.inference_mode():
            for batch in self._batches([len(s[0]) - 1 for s in seqs]):
                maxlen = max(len(seqs[k][0]) - 1 for k in batch)
                ids = torch.full((len(batch), maxlen), self.tokenizer.pad_token_id, dtype=torch.long)
                att = torch.zeros((len(batch), maxlen), dtype=torch.long)
                for r, k in enumerate(batch):
                    toks = seqs[k][0][:-1]  # the last token is never an input
                    ids[r, : len(toks)] = torch.tensor(toks)
                    att[r, : len(toks)] = 1
                logits = self.model(input_ids=ids.to(self.device), attention_mask=att.to(self.device)).logits
                spans = [range(seqs[k][1] - 1, seqs[k][1] - 1 + seqs[k][2]) for k in batch]
                lps = self._scored(ids, att, [list(p) for p in spans],
                                   [logits[r, p.start:p.stop] for r, p in enumerate(spans)], [leads[k] for k in batch])
                for r, k in enumerate(batch):
                    full, nctx, _ = seqs[k]
                    tgt = torch.tensor(full[nctx:], device=lps[r].device)
                    res[k] = float(lps[r].gather(1, tgt[:, None]).sum())
        return res

    def sequence_logprob(self, texts: Sequence[str]) -> list[tuple[float, int]]:
        tok = self.tokenizer
        if self.model_type == "masked":
            # score every non-special token; specials ([CLS]/[SEP]) are context only
            pairs, spans = [], []
            for t in texts:
                ids = tok(t, add_special_tokens=True)["input_ids"]
                special = set(tok.all_special_ids)
                body = [k for k, i in enumerate(ids) if i not in special]
                spans.append(body)
                pairs.append(ids)
            return self._pll_positions(pairs, spans)
        pairs = []
        for t in texts:
            ids = tok(t, add_special_tokens=False)["input_ids"]
            start = tok.bos_token_id if tok.bos_token_id is not None else tok.eos_token_id
            pairs.append(([start], ids))
        scores = self._causal_span_scores(pairs, [1] * len(pairs))  # the start token is the backend's own
        return [(s, len(c)) for s, (_, c) in zip(scores, pairs)]

    def _pll_positions(self, seqs: list[list[int]], positions: list[list[int]]) -> list[tuple[float, int]]:
        torch = self._torch
        tok = self.tokenizer
        jobs = [(p, k) for p, pos in enumerate(positions) for k in pos]
        res = [0.0] * len(seqs)
        with torch.inference_mode():
            for batch in self._batches([len(seqs[p]) for p, _ in jobs]):
                maxlen = max(len(seqs[jobs[b][0]]) for b in batch)
                ids = torch.full((len(batch), maxlen), tok.pad_token_id, dtype=torch.long)
                att = torch.zeros_like(ids)
                for r, b in enumerate(batch):
                    p, k = jobs[b]
                    ids[r, : len(seqs[p])] = torch.tensor(seqs[p])
                    ids[r, k] = tok.mask_token_id
                    att[r, : len(seqs[p])] = 1
                logits = self.model(input_ids=ids.to(self.device), attention_mask=att.to(self.device)).logits
                lps = self._scored(ids, att, [[jobs[b][1]] for b in batch],
                                   [logits[r, jobs[b][1]:jobs[b][1] + 1] for r, b in enumerate(batch)],
                                   [self._lead_of(seqs[jobs[b][0]]) for b in batch])
                for r, b in enumerate(batch):
                    p, k = jobs[b]
                    res[p] += float(lps[r][0, seqs[p][k]])
        return [(s, len(pos)) for s, pos in zip(res, positions)]

    def pll_positions(self, seqs: list[list[int]], positions: list[list[int]]) -> list[tuple[float, int]]:
        """Masked LM: PLL of chosen token positions of already-tokenised sequences (CrowS-Pairs)."""
        if self.model_type != "masked":
            raise CapabilityError(f"{self.name} is not a masked LM")
        return self._pll_positions(seqs, positions)

    # -- next-token distribution --------------------------------------------------------------
    def next_token_logprobs(self, contexts: Sequence[str], candidates: Sequence[Sequence[str]]) -> list[list[float]]:
        if self.model_type != "causal":
            raise CapabilityError(f"{self.name} is a masked LM; next-token probabilities need a causal LM")
        # trailing whitespace belongs to the candidate, exactly as in loglikelihood_choices
        encs = [self._encode(c.rstrip() if c.strip() else c) for c in contexts]
        return self._last_token_logprobs(
            encs, [[self.first_token_id(ctx, c) for c in cands] for ctx, cands in zip(contexts, candidates)],
            [self._lead_of(e) for e in encs])

    def chat_choice_logprobs(self, conversations, candidates) -> list[list[float]]:
        tok = self.tokenizer
        # chat templates already contain BOS where the model wants one
        encs = [tok(self.apply_chat_template(list(c)), add_special_tokens=False)["input_ids"] for c in conversations]
        ids = [tok(c, add_special_tokens=False)["input_ids"][0] for c in candidates]
        return self._last_token_logprobs(encs, [ids] * len(encs), [0] * len(encs))  # a chat prompt has no text start

    def _last_token_logprobs(self, encs: list[list[int]], token_ids: list[list[int]], leads: list[int]) -> list[list[float]]:
        """log P(token | sequence) at the end of each encoded sequence, for the given token ids."""
        rows = self._last_logits(encs, leads)
        return [[float(lp[t]) for t in ids] for lp, ids in zip(rows, token_ids)]

    def _last_logits(self, encs: list[list[int]], leads: list[int]):
        """Log-softmax of the next-token logits after each sequence (left-padded batches, last position only);
        ``leads``: start tokens per sequence (see ``_scored``)."""
        torch = self._torch
        res: dict[int, Any] = {}
        with torch.inference_mode():
            for batch in self._batches([len(e) for e in encs]):
                maxlen = max(len(encs[k]) for k in batch)
                ids = torch.full((len(batch), maxlen), self.tokenizer.pad_token_id, dtype=torch.long)
                att = torch.zeros_like(ids)
                for r, k in enumerate(batch):
                    ids[r, maxlen - len(encs[k]):] = torch.tensor(encs[k])
                    att[r, maxlen - len(encs[k]):] = 1
                pos = (att.cumsum(-1) - 1).clamp(min=0)
                logits = self.model(input_ids=ids.to(self.device), attention_mask=att.to(self.device),
                                    position_ids=pos.to(self.device), logits_to_keep=1).logits
                lps = self._scored(ids, att, [[maxlen - 1]] * len(batch), list(logits[:, -1:]), [leads[k] for k in batch])
                for r, k in enumerate(batch):
                    res[k] = lps[r][0]
        return [res[k] for k in range(len(encs))]

    def first_token_id(self, context: str, candidate: str) -> int:
        _, cont = self._encode_pair(context, candidate)
        return cont[0]

    # -- generation -----------------------------------------------------------------------------
    def apply_chat_template(self, messages: list[dict]) -> str:
        if not self.can_chat:
            raise CapabilityError(f"{self.name} has no chat template; chat benchmarks and methods need one")
        return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)

    def generate(self, requests: Sequence[GenerationRequest]) -> list[GenerationResult]:
        tok = self.tokenizer
        prompts = [self.apply_chat_template(r.messages) for r in requests]
        # chat templates already contain BOS where the model wants one
        encs = [tok(p, add_special_tokens=False)["input_ids"] for p in prompts]
        results: list[GenerationResult | None] = [None] * len(requests)
        eos = _eos_ids(self.model, tok)
        # group by sampling settings so a batch shares one generate() call and one seed
        groups: dict[tuple, list[int]] = {}
        for k, r in enumerate(requests):
            groups.setdefault((r.max_new_tokens, r.temperature, r.top_p, r.seed), []).append(k)
        for (max_new, temp, top_p, seed), idxs in groups.items():
            check = not (temp and temp > 0) and self._first_margin() > 0
            new_of: dict[int, list[int]] = {}
            margin_of: dict[int, float] = {}
            for batch in self._batches([len(encs[k]) for k in idxs]):
                ks = [idxs[b] for b in batch]
                news, margins = self._generate_ids([encs[k] for k in ks], max_new, temp, top_p, seed, margins=check)
                new_of.update(zip(ks, news))
                margin_of.update(zip(ks, margins or []))
            if check:  # one float32 pass for all the near-ties of the call: its cost is streaming the weights
                news = [new_of[k] for k in idxs]
                self._fix_first_tokens([encs[k] for k in idxs], news, [margin_of[k] for k in idxs], max_new, eos)
                new_of = dict(zip(idxs, news))
            for k in idxs:
                new = new_of[k]
                n = next((i for i, t in enumerate(new) if t in eos), len(new))
                text = tok.decode(new[:n], skip_special_tokens=True)
                for s in requests[k].stop:
                    if s in text:
                        text = text[: text.index(s)]
                results[k] = GenerationResult(text=text.strip(), prompt_tokens=len(encs[k]), completion_tokens=n)
        return results  # type: ignore[return-value]

    def _generate_ids(self, encs: list[list[int]], max_new: int, temp: float, top_p: float, seed: int | None,
                      margins: bool = False) -> tuple[list[list[int]], list[float] | None]:
        """New token ids per prompt (left-padded batch), and the first step's top-two log-prob margins."""
        torch = self._torch
        tok = self.tokenizer
        maxlen = max(len(e) for e in encs)
        ids = torch.full((len(encs), maxlen), tok.pad_token_id, dtype=torch.long)
        att = torch.zeros_like(ids)
        for r, e in enumerate(encs):
            ids[r, maxlen - len(e):] = torch.tensor(e)
            att[r, maxlen - len(e):] = 1
        kwargs: dict[str, Any] = dict(max_new_tokens=max_new, pad_token_id=tok.pad_token_id)
        if temp and temp > 0:
            kwargs.update(do_sample=True, temperature=temp, top_p=top_p, top_k=0)
            torch.manual_seed(seed if seed is not None else 0)
        else:
            kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
        if margins:
            kwargs.update(output_scores=True, return_dict_in_generate=True)
        procs = self.logits_processors(encs)
        if procs:
            from transformers import LogitsProcessorList

            kwargs["logits_processor"] = LogitsProcessorList(procs)
        shared = None if procs or not self.share_prefixes else shared_prefix_groups(encs)
        with torch.inference_mode():
            if shared is not None:
                ids, att, kwargs[self.cache_kw] = self._prefix_cache(encs, *shared)
                maxlen = ids.shape[1]
            out = self.model.generate(input_ids=ids.to(self.device), attention_mask=att.to(self.device), **kwargs)
        seqs = out.sequences if margins else out
        news = [seqs[r, maxlen:].tolist() for r in range(len(encs))]
        if not margins:
            return news, None
        top2 = torch.log_softmax(out.scores[0].float(), -1).topk(2, -1).values
        return news, (top2[:, 0] - top2[:, 1]).tolist()

    def _prefix_cache(self, encs: list[list[int]], group: list[int], lens: list[int]):
        """The batch laid out as [left pad, shared prefix, pad, own suffix] per row, and the keys/values of
        each group's prefix computed once and repeated for its rows (positions follow the mask, so each
        row sees the same positions as without sharing)."""
        torch = self._torch
        pad = self.tokenizer.pad_token_id
        n_groups = max(group) + 1
        rep = [group.index(g) for g in range(n_groups)]
        lp = max(lens)
        ls = max(len(e) - lens[group[r]] for r, e in enumerate(encs))
        pre = torch.full((n_groups, lp), pad, dtype=torch.long)
        pre_att = torch.zeros_like(pre)
        for g, r in enumerate(rep):
            pre[g, lp - lens[g]:] = torch.tensor(encs[r][:lens[g]])
            pre_att[g, lp - lens[g]:] = 1
        pos = (pre_att.cumsum(-1) - 1).clamp(min=0)
        # only the keys/values are wanted: logits_to_keep=1 skips the vocabulary projection of every prefix token
        out = self.model(input_ids=pre.to(self.device), attention_mask=pre_att.to(self.device),
                         position_ids=pos.to(self.device), use_cache=True, logits_to_keep=1)
        cache = getattr(out, "cache", None) or out.past_key_values
        cache.batch_select_indices(torch.tensor(group, device=self.device))
        ids = torch.full((len(encs), lp + ls), pad, dtype=torch.long)
        att = torch.zeros_like(ids)
        for r, e in enumerate(encs):
            g = group[r]
            ids[r, :lp], att[r, :lp] = pre[g], pre_att[g]
            suf = e[lens[g]:]
            ids[r, lp + ls - len(suf):] = torch.tensor(suf)
            att[r, lp + ls - len(suf):] = 1
        return ids, att, cache

    def _first_margin(self) -> float:
        """The float32 first-token threshold in force: off (0) whenever near-tie re-scoring is off."""
        return self.first_token_margin if self.rescore_margin > 0 else 0.0

    def _fp32_weights(self):
        if self._fp32 is None:
            from .precision import Float32Weights

            self._fp32 = Float32Weights(self.model, self._weights_dir)
        return self._fp32

    def _fix_first_tokens(self, encs, news, margins, max_new, eos) -> None:
        """Greedy bf16 answers whose first token was a near-tie: that token decided in float32, the rest
        regenerated after it when it changed. (In a short answer the first token is the answer.)"""
        near = [r for r, m in enumerate(margins) if m < self._first_margin() and news[r]]
        if not near:
            return
        with self._fp32_weights().active():
            first = self._last_token_argmax([encs[r] for r in near])
        self.n_first_fp32 += len(near)
        redo = [(r, t) for r, t in zip(near, first) if t != news[r][0]]
        self.n_regenerated += len(redo)
        cont_rows = [(r, t) for r, t in redo if t not in eos and max_new > 1]
        conts = self._generate_ids([encs[r] + [t] for r, t in cont_rows], max_new - 1, 0.0, 1.0, None)[0] \
            if cont_rows else []
        for r, t in redo:
            news[r] = [t]
        for (r, t), c in zip(cont_rows, conts):
            news[r] = [t] + c

    def _last_token_argmax(self, encs: list[list[int]]) -> list[int]:
        shared = shared_prefix_groups(encs) if self.share_prefixes and not self.logits_processors(encs) else None
        if shared is None:
            return [int(lp.argmax()) for lp in self._last_logits(encs, [0] * len(encs))]  # chat prompts
        torch = self._torch
        with torch.inference_mode():
            ids, att, cache = self._prefix_cache(encs, *shared)
            lp = cache.get_seq_length()
            pos = (att.cumsum(-1) - 1).clamp(min=0)
            logits = self.model(input_ids=ids[:, lp:].to(self.device), attention_mask=att.to(self.device),
                                position_ids=pos[:, lp:].to(self.device), use_cache=True,
                                logits_to_keep=1, **{self.cache_kw: cache}).logits
        return logits[:, -1].argmax(-1).tolist()


def _flag(v: Any) -> bool:
    """A boolean backend option, also when given as text on the command line."""
    return v if isinstance(v, bool) else str(v).strip().lower() not in ("false", "0", "no", "off")


def _top2_margin(row: Sequence[float]) -> float:
    a, b = sorted(row)[-2:]
    return b - a


#: the least number of prompt tokens rows must share for their prefix to be computed once
MIN_SHARED_PREFIX = 32


def shared_prefix_groups(encs: list[list[int]], min_shared: int = MIN_SHARED_PREFIX):
    """Rows grouped by a long common token prefix (e.g. one question asked in several option orders):
    (group index per row, shared length per group), or None when no prefix is shared by two rows. A
    group's shared length leaves every member at least one token of its own to feed the model."""
    group: list[int] = []
    lens: list[int] = []
    reps: list[list[int]] = []
    for e in encs:
        for g, r in enumerate(reps):
            n = 0
            for a, b in zip(e, r[:lens[g]]):
                if a != b:
                    break
                n += 1
            n = min(n, len(e) - 1)
            if n >= min_shared:
                group.append(g)
                lens[g] = n
                break
        else:
            group.append(len(reps))
            reps.append(e)
            lens.append(len(e) - 1)
    if len(reps) == len(encs):
        return None
    # a singleton keeps its whole prompt but one token as its "prefix"; members shrink to the common part
    for r, e in enumerate(encs):
        lens[group[r]] = min(lens[group[r]], len(e) - 1)
    if not _sharing_pays(encs, group, lens):
        return None
    return group, lens


#: sharing prefixes lays a batch out as [pad, prefix, pad, suffix], padded to the longest prefix plus the
#: longest suffix; it is used only when the tokens it computes are at most this share of a plain batch's
SHARING_MAX_COST = 0.75


def _sharing_pays(encs: list[list[int]], group: list[int], lens: list[int]) -> bool:
    """Whether computing each group's prefix once costs clearly fewer token positions than the plain
    left-padded batch. Rows of one question in several option orders share most of their prompt and
    pass; unrelated questions that merely share a chat template's opening do not (measured: sharing a
    system prompt made Qwen2.5's BBQ generation 10% slower, speed/generation_speed.py)."""
    n_groups = max(group) + 1
    suffix = max(len(e) - lens[group[r]] for r, e in enumerate(encs))
    shared_cost = n_groups * max(lens) + len(encs) * suffix
    plain_cost = len(encs) * max(len(e) for e in encs)
    return shared_cost <= SHARING_MAX_COST * plain_cost


def _eos_ids(model, tok) -> set[int]:
    ids = model.generation_config.eos_token_id if model.generation_config is not None else None
    if ids is None:
        ids = tok.eos_token_id
    if isinstance(ids, int):
        ids = [ids]
    return set(ids or [])


def _is_masked(model) -> bool:
    return any("MaskedLM" in a for a in (model.config.architectures or [type(model).__name__])) or \
        type(model).__name__.endswith("ForMaskedLM")


def _looks_like_hub_id(s: str) -> bool:
    parts = s.split("/")
    return len(parts) == 2 and all(parts) and not s.startswith((".", "/", "~"))


def perplexity(logprob: float, n_tokens: int) -> float:
    return math.exp(-logprob / max(n_tokens, 1))
