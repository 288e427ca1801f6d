"""Self-Debias (Schick, Udupa & Schütze, TACL 2021, "Self-Diagnosis and Self-Debiasing").

At every scored or generated position the model's next-token distribution ``p(w | x)`` is compared
with its distributions after each bias-eliciting prefix ``s_i`` ("The following text discriminates
against people because of their gender:"), and tokens a prefix makes more likely are scaled down::

    Δ(w) = p(w | x) - max_i p(w | s_i, x)
    α(w) = exp(λ · Δ(w)) if Δ(w) < 0 else 1,   floored at ε
    p̃(w | x) = α(w) p(w | x) / Σ_v α(v) p(v | x)

λ (``decay_constant``) is 50 as in the paper; ε (``epsilon``) is 0.01 as in the authors' released
code (the paper's formula has no floor: ``epsilon=0``). Prefixes: ``self_debias_prefixes.yaml``, one
per CrowS-Pairs bias type (all nine by default, so a token any of them promotes is scaled down).

Where it acts (the in-process ``hf`` backend): every log-likelihood the backend computes (sentence
log-likelihoods and masked-LM pseudo-log-likelihoods for CrowS-Pairs, StereoSet and HolisticBias,
option log-likelihoods for BBQ, next-token log-probabilities), lm-evaluation-harness (capability)
through :meth:`HFBackend.model_logits`, and generation through a transformers ``LogitsProcessor``
that keeps one KV cache per prefix. The prefix is placed after the text's start token (BOS or
[CLS]) when the text has one, and before a chat prompt's template (whose turn markers must stay
first in their turn). Cost: one extra forward pass per prefix for every token; log-likelihood
scoring also gives up the backend's shared-context reuse (every option is scored in full).

vLLM and OpenAI-compatible servers cannot run it: it needs the full next-token distribution under
every prefix at every position, and they return top-k log-probabilities only (vLLM's logits
processors, moreover, cannot run the model on other inputs). The intervention refuses them in one line.

Precision: α = exp(λΔ) with λ = 50 turns rounding in the probabilities into large score changes
(SmolLM2, 30 CrowS-Pairs sentences, bfloat16 vs float32 sentence log-likelihood: 0.25 nats apart on
average for the plain model, 0.91 under self-debias with the gender prefix). So while attached, the
model computes in float32 (``float32=true``, default), with the checkpoint's exact float32 weights
where the backend has them (``HFBackend.float32``); ``float32=false`` keeps the model's own dtype.
"""
from __future__ import annotations

import math
from contextlib import ExitStack
from functools import lru_cache
from pathlib import Path
from typing import Any

from pydantic import Field

from ..options import PathStr, comma_list
from ..errors import UserError
from ..registry import INTERVENTIONS
from .base import Intervention, InterventionOptions

PREFIX_FILE = Path(__file__).with_name("self_debias_prefixes.yaml")


@lru_cache(maxsize=8)
def load_prefixes(path: str) -> dict[str, str]:
    """name -> prefix text from a YAML mapping; anything else is a one-line UserError."""
    from ..data import read_yaml_mapping

    raw = read_yaml_mapping(path, "self-debias prefixes file")
    bad = [k for k, v in raw.items() if not isinstance(v, str) or not v.strip()]
    if bad or not raw:
        raise UserError(f"{path}: every entry must be a non-empty prefix text (bad: {', '.join(map(str, bad)) or 'no entries'})")
    return {str(k): v for k, v in raw.items()}


def debias_logprobs(plain, biased: list, decay_constant: float = 50.0, epsilon: float = 0.01):
    """Self-debiased log-probabilities from the plain log-probabilities and those under each prefix
    (tensors over the vocabulary in the last dimension). Computed in log space: a token whose
    probability underflows keeps a finite log-probability."""
    import torch

    p = plain.exp()
    p_biased = torch.stack([b.exp() for b in biased]).amax(0)
    log_alpha = -decay_constant * (p_biased - p).clamp(min=0.0)
    if epsilon > 0:
        log_alpha = log_alpha.clamp(min=math.log(epsilon))
    scaled = plain + log_alpha
    return scaled - torch.logsumexp(scaled, dim=-1, keepdim=True)


@INTERVENTIONS.register("self-debias")
class SelfDebias(Intervention):
    """Self-Debias (Schick et al. 2021): scale down tokens that bias-eliciting prefixes make more likely."""

    rescores = True
    needs = ("the full next-token distribution under every prefix at every position (vLLM and OpenAI-compatible "
             "servers return top-k log-probabilities only)")

    class Options(InterventionOptions):
        bias_types: comma_list(empty=None) = Field(None, description="prefixes to use, by name (default: every entry of the file)")
        prefixes: PathStr | None = Field(None, description="YAML file name -> prefix text (default: the shipped "
                                                           "self_debias_prefixes.yaml, the nine CrowS-Pairs bias types)")
        decay_constant: float = Field(50.0, gt=0, description="λ: α = exp(λ·Δ) for Δ < 0 (paper: 50)")
        epsilon: float = Field(0.01, ge=0, lt=1, description="floor of α (authors' code: 0.01; 0 = the paper's formula)")
        float32: bool = Field(True, description="compute in float32 while attached, also for a model held in bfloat16 "
                                                "(λ turns rounding in the probabilities into large score changes)")

    def __init__(self, **options: Any):
        super().__init__(**options)
        table = load_prefixes(str(Path(self.opts.prefixes).expanduser()) if self.opts.prefixes else str(PREFIX_FILE))
        names = self.opts.bias_types or list(table)
        unknown = [n for n in names if n not in table]
        if unknown:
            raise UserError(f"self-debias: no prefix named {', '.join(map(repr, unknown))}; known: {', '.join(table)}")
        self.prefix_texts = [table[n] for n in names]
        self._ids: list[list[int]] | None = None
        self._precision = ExitStack()

    def attach(self, backend) -> None:
        if self.opts.float32:
            self._precision.enter_context(backend.float32())

    def detach(self, backend) -> None:
        self._precision.close()

    def identity(self) -> dict[str, Any]:
        # the prefix texts themselves, so that an edited prefixes file is a different run
        return {**super().identity(), "prefix_texts": self.prefix_texts}

    def cost(self) -> dict[str, Any]:
        return {"extra_forward_passes": len(self.prefix_texts)}

    def prefix_ids(self, tokenizer) -> list[list[int]]:
        if self._ids is None:
            self._ids = [tokenizer(t, add_special_tokens=False)["input_ids"] for t in self.prefix_texts]
        return self._ids

    def debias(self, plain, biased):
        return debias_logprobs(plain, biased, self.opts.decay_constant, self.opts.epsilon)

    # -- scoring --------------------------------------------------------------------------------
    def adjust_logprobs(self, backend, ids, att, positions, logprobs, lead):
        prefixes = self.prefix_ids(backend.tokenizer)
        masked = backend.model_type == "masked"
        # per (prefix k, row r), k-major: the row's start tokens + prefix (the head), the rest of its tokens
        # (the tail), and the scored positions in head + tail
        jobs = []
        for pre in prefixes:
            for r in range(len(positions)):
                keep = att[r].bool()
                real = ids[r][keep].tolist()
                offset = int(keep.nonzero()[0]) if keep.any() else 0  # left padding
                n = lead[r]
                # a causal LM's logits at position q predict token q + 1: the last start token's position
                # moves too, since the prefix now follows it
                first_moved = n if masked else n - 1
                where = [q - offset + len(pre) if q - offset >= first_moved else q - offset for q in positions[r]]
                jobs.append((real[:n] + pre, real[n:], where))
        biased = self._run_masked(backend, jobs) if masked else self._run_causal(backend, jobs)
        B = len(positions)
        return [self.debias(logprobs[r], [biased[k * B + r] for k in range(len(prefixes))]) for r in range(B)]

    @staticmethod
    def _run_masked(backend, jobs):
        """Log-softmax at the scored positions of each head + tail (right-padded batches)."""
        import torch

        seqs = [head + tail for head, tail, _ in jobs]
        out: list[Any] = [None] * len(jobs)
        pad = backend.tokenizer.pad_token_id
        for batch in backend._batches([len(s) for s in seqs]):
            maxlen = max(len(seqs[i]) for i in batch)
            ids = torch.full((len(batch), maxlen), pad, dtype=torch.long)
            att = torch.zeros_like(ids)
            for r, i in enumerate(batch):
                ids[r, : len(seqs[i])] = torch.tensor(seqs[i])
                att[r, : len(seqs[i])] = 1
            logits = backend.model(input_ids=ids.to(backend.device), attention_mask=att.to(backend.device)).logits
            for r, i in enumerate(batch):
                out[i] = torch.log_softmax(logits[r, jobs[i][2]].float(), -1)
        return out

    @staticmethod
    def _run_causal(backend, jobs):
        """As ``_run_masked``, for a causal LM: each distinct head (start tokens + prefix) runs once and its
        KV cache serves every tail that follows it, so a prefix costs its rows' own tokens only."""
        import copy

        import torch

        out: list[Any] = [None] * len(jobs)
        pad = backend.tokenizer.pad_token_id
        groups: dict[tuple, list[int]] = {}
        for i, (head, _, _) in enumerate(jobs):
            groups.setdefault(tuple(head), []).append(i)
        for head, members in groups.items():
            H = len(head)
            h_out = backend.model(input_ids=torch.tensor([head], device=backend.device), use_cache=True)
            h_logits, h_cache = h_out.logits[0], backend.cache_of(h_out)
            for batch in backend._batches([len(jobs[i][1]) for i in members]):
                rows = [members[b] for b in batch]
                L = max(len(jobs[i][1]) for i in rows)
                logits = None
                if L:
                    ids = torch.full((len(rows), L), pad, dtype=torch.long)
                    att = torch.zeros((len(rows), H + L), dtype=torch.long)
                    att[:, :H] = 1
                    for r, i in enumerate(rows):
                        tail = jobs[i][1]
                        ids[r, : len(tail)] = torch.tensor(tail, dtype=torch.long)
                        att[r, H: H + len(tail)] = 1
                    cache = copy.deepcopy(h_cache)
                    cache.batch_repeat_interleave(len(rows))
                    pos = (H + torch.arange(L))[None, :].expand(len(rows), L)
                    logits = backend.model(input_ids=ids.to(backend.device), attention_mask=att.to(backend.device),
                                           position_ids=pos.to(backend.device), use_cache=True,
                                           **{backend.cache_kw: cache}).logits
                for r, i in enumerate(rows):
                    picked = [h_logits[q] if q < H else logits[r, q - H] for q in jobs[i][2]]
                    out[i] = torch.log_softmax(torch.stack(picked).float(), -1)
        return out

    # -- generation -----------------------------------------------------------------------------
    def logits_processor(self, backend, prompts: list[list[int]]):
        return _processor_class()(self, backend, prompts)


@lru_cache(maxsize=1)
def _processor_class():
    """Built on first use: importing transformers is slow, and ``fairdistill list`` imports this module."""
    from transformers import LogitsProcessor

    class SelfDebiasProcessor(LogitsProcessor):
        """Self-debiasing for ``generate``: keeps every prompt under every prefix in a KV cache of its own,
        feeds it the token the plain sequence chose at each step, and debiases the plain scores with the
        prefixed distributions. Works with greedy decoding and sampling alike (it runs before the
        temperature and top-p warpers, which transformers applies last)."""

        def __init__(self, sd: SelfDebias, backend, prompts: list[list[int]]):
            self.sd, self.backend, self.prompts = sd, backend, prompts
            self.cache = self.att = self.next_pos = None

        def __call__(self, input_ids, scores):
            import torch

            be = self.backend
            prefixes = self.sd.prefix_ids(be.tokenizer)
            B, K = len(self.prompts), len(prefixes)
            if self.cache is None:  # first step: the prompts, prefix first (a chat template's markers stay intact)
                seqs = [pre + p for pre in prefixes for p in self.prompts]
                maxlen = max(len(s) for s in seqs)
                ids = torch.full((len(seqs), maxlen), be.tokenizer.pad_token_id, dtype=torch.long)
                att = torch.zeros_like(ids)
                for r, s in enumerate(seqs):
                    ids[r, maxlen - len(s):] = torch.tensor(s)
                    att[r, maxlen - len(s):] = 1
                pos = (att.cumsum(-1) - 1).clamp(min=0)
                self.att, self.next_pos = att.to(be.device), att.sum(-1).to(be.device)
                out = be.model(input_ids=ids.to(be.device), attention_mask=self.att, position_ids=pos.to(be.device),
                               use_cache=True, logits_to_keep=1)
            else:  # the token each plain sequence took last step, for all its prefixed copies
                new = input_ids[:, -1].repeat(K)[:, None].to(be.device)
                self.att = torch.cat([self.att, torch.ones_like(new)], dim=1)
                out = be.model(input_ids=new, attention_mask=self.att, position_ids=self.next_pos[:, None],
                               use_cache=True, **{be.cache_kw: self.cache})
                self.next_pos = self.next_pos + 1
            self.cache = be.cache_of(out)
            lp = torch.log_softmax(out.logits[:, -1].float(), -1)
            plain = torch.log_softmax(scores.float(), -1)
            return self.sd.debias(plain, [lp[k * B:(k + 1) * B] for k in range(K)]).to(scores.dtype)

    return SelfDebiasProcessor
