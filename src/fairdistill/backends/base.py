"""The model backend interface every benchmark and method talks to.

A backend answers four kinds of request (cf. lm-evaluation-harness's ``LM``):

- ``loglikelihood_choices``: log P(continuation | context) for several continuations of one
  shared context (multiple choice). Backends that can reuse the shared prefix do so.
- ``sequence_logprob``: total log-probability of whole texts (perplexity; pseudo-log-likelihood
  for masked LMs).
- ``next_token_logprobs``: log-probabilities of chosen tokens right after a context.
- ``generate``: a chat completion from a list of messages (greedy or sampled).

A backend that cannot serve a request kind raises :class:`CapabilityError` with one clear line.

Beyond these, a backend declares optional abilities in :meth:`Backend.capabilities`, which
benchmarks ask instead of probing attributes:

- ``"chat_template"``: :meth:`apply_chat_template` renders a conversation as the prompt text;
- ``"chat_choice_logprobs"``: :meth:`chat_choice_logprobs` scores the first token of a chat reply;
- ``"token_pll"``: :meth:`pll_positions` scores chosen token positions of a masked LM (with ``tokenizer``);
- ``"model_object"``: :meth:`model_and_tokenizer` hands over the in-process model (lm-eval's HFLM).

A backend registers under the model-string prefix it serves (``@BACKENDS.register("hf")`` serves
``hf:...``) and is built by its ``from_spec(target, **options)`` classmethod.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

from ..errors import CapabilityError, UserError

ChatMessage = dict  # {"role": "system"|"user"|"assistant", "content": str}


@dataclass
class GenerationRequest:
    messages: list[ChatMessage]
    max_new_tokens: int = 64
    temperature: float = 0.0  # 0 = greedy
    top_p: float = 1.0
    seed: int | None = None  # per-request seed makes sampled runs reproducible and resumable
    stop: list[str] = field(default_factory=list)


@dataclass
class GenerationResult:
    text: str
    prompt_tokens: int = 0
    completion_tokens: int = 0


class Backend:
    """Base class. Subclasses override the request kinds they support."""

    name: str = "backend"
    #: "causal" or "masked"
    model_type: str = "causal"
    #: the tokenizer, where the backend has one in-process (masked-LM token scoring needs it)
    tokenizer: Any = None

    @classmethod
    def from_spec(cls, target: str, **options: Any) -> "Backend":
        """Build the backend from the part of a model string after its prefix."""
        raise UserError(f"backend {cls.__name__} cannot be built from a model string")

    def capabilities(self) -> set[str]:
        """Optional abilities (see the module docstring); the four request kinds are not listed."""
        return set()

    # -- capabilities -----------------------------------------------------------------------
    @property
    def can_chat(self) -> bool:
        return False

    @property
    def can_score(self) -> bool:
        return False

    def describe(self) -> dict[str, Any]:
        """Identity of the model for run configs (never includes secrets)."""
        return {"backend": type(self).__name__, "model": self.name, "model_type": self.model_type}

    # -- request kinds ----------------------------------------------------------------------
    def loglikelihood_choices(
        self, requests: Sequence[tuple[str, Sequence[str]]]
    ) -> list[list[float]]:
        """For each (context, continuations): summed log-prob of each continuation's tokens."""
        raise CapabilityError(f"{self.name} cannot compute log-likelihoods")

    def continuation_lengths(self, requests: Sequence[tuple[str, Sequence[str]]]) -> list[list[int]]:
        """Token counts of each continuation (for length-normalised scoring)."""
        raise CapabilityError(f"{self.name} cannot count tokens")

    def sequence_logprob(self, texts: Sequence[str]) -> list[tuple[float, int]]:
        """(total log-prob, number of scored tokens) for each text; PLL for masked LMs."""
        raise CapabilityError(f"{self.name} cannot score sequences")

    def next_token_logprobs(
        self, contexts: Sequence[str], candidates: Sequence[Sequence[str]]
    ) -> list[list[float]]:
        """log P(first token of each candidate | context). Candidates are strings."""
        raise CapabilityError(f"{self.name} cannot return next-token distributions")

    def generate(self, requests: Sequence[GenerationRequest]) -> list[GenerationResult]:
        raise CapabilityError(f"{self.name} cannot generate chat responses")

    def chat_choice_logprobs(
        self, conversations: Sequence[list[ChatMessage]], candidates: Sequence[str]
    ) -> list[list[float]]:
        """log P(first token of each candidate) as the start of the assistant's reply to each conversation."""
        raise CapabilityError(f"{self.name} cannot score the first token of a chat reply")

    def apply_chat_template(self, messages: list[ChatMessage]) -> str:
        raise CapabilityError(f"{self.name} cannot render a chat template as text")

    def pll_positions(self, seqs: list[list[int]], positions: list[list[int]]) -> list[tuple[float, int]]:
        raise CapabilityError(f"{self.name} cannot score token positions of a masked LM")

    def model_and_tokenizer(self) -> tuple[Any, Any]:
        raise CapabilityError(f"{self.name} holds no in-process model object (needs the hf backend)")

    def stats(self) -> dict[str, Any]:
        """Counters worth recording with a run (e.g. items re-scored in float32)."""
        return {}

    def close(self) -> None:
        pass

    #: why the backend cannot score log-likelihoods, when it found out (e.g. a server whose log-probs failed a check)
    why_no_scores: str | None = None

    def require(self, *, chat: bool = False, score: bool = False, what: str = "this benchmark") -> None:
        if chat and not self.can_chat:
            raise CapabilityError(f"{what} needs a chat model, but {self.name} has no chat template/endpoint")
        if score and not self.can_score:
            why = self.why_no_scores
            raise CapabilityError(f"{what} needs log-likelihoods, which {self.name} cannot provide"
                                  + (f": {why}" if why else ""))


def encode_pair(tokenizer, context: str, continuation: str) -> tuple[list[int], list[int]]:
    """Token ids of (context, continuation) as lm-evaluation-harness splits them.

    Trailing context whitespace belongs to the continuation (the usual " answer" token); the
    continuation's ids are the tail of the joint encoding, so merges across the boundary count.
    The tokenizer's own default decides BOS (Gemma/Llama add it, GPT-2 style ones do not).
    """
    n_space = len(context) - len(context.rstrip())
    if n_space:
        continuation = context[-n_space:] + continuation
        context = context[:-n_space]
    whole = tokenizer(context + continuation, add_special_tokens=True)["input_ids"]
    ctx = tokenizer(context, add_special_tokens=True)["input_ids"]
    return ctx, whole[len(ctx):]


def parse_model_spec(spec: str) -> tuple[str, str]:
    """Split ``kind:target`` where ``kind`` is a registered backend name (``hf:PATH``,
    ``openai:URL#MODEL``, ``vllm:PATH``, or a plugin's); anything else is an ``hf`` model."""
    from ..registry import BACKENDS

    kind, sep, target = spec.partition(":")
    if sep and kind in BACKENDS.names():
        return kind, target
    return "hf", spec


def load_backend(spec: str, **options: Any) -> Backend:
    """Build a backend from a model string. See README "Choosing a backend"."""
    from ..registry import BACKENDS

    kind, target = parse_model_spec(spec)
    cls = BACKENDS.get(kind)
    if not target:
        raise UserError(f"model string {spec!r} names no model")
    return cls.from_spec(target, **options)


def in_process(backend):
    """The backend that holds the model: ``backend`` itself, or the one a wrapper (response cache) wraps."""
    while getattr(backend, "backend", None) is not None and backend.backend is not backend:
        backend = backend.backend
    return backend
