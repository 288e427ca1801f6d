"""The intervention interface, and ``applied``: attach one to a backend for the duration of a run.

An intervention works on the in-process ``hf`` backend (:class:`fairdistill.backends.hf.HFBackend`)
in one or both of two ways:

- hooks on the model's forward pass (projection debiasing): every consumer of the model object,
  lm-evaluation-harness included, sees the changed hidden states;
- ``rescores = True``: the backend routes the log-probabilities of every scored position through
  :meth:`Intervention.adjust_logprobs` and every generation through
  :meth:`Intervention.logits_processor` (self-debias). Consumers of the bare model object call
  :meth:`HFBackend.model_logits` instead (the backend declares ``"adjusted_logits"``).

Other backends refuse in one line (:meth:`Intervention.check`): the HTTP and vLLM backends hold no
model object to hook, and return top-k log-probabilities only.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Any, ClassVar, Iterator

from pydantic import BaseModel, ConfigDict

from ..backends.base import in_process  # noqa: F401  (its old home)
from ..errors import CapabilityError, UserError


class InterventionOptions(BaseModel):
    """An intervention's options: defaults, validation (one-line errors), ``fairdistill options NAME``."""

    model_config = ConfigDict(extra="forbid")


class Intervention:
    """Subclass, set ``Options``, implement ``attach``/``detach`` (hooks) or ``adjust_logprobs`` and
    ``logits_processor`` (``rescores = True``), and register in ``INTERVENTIONS``."""

    name: ClassVar[str] = "intervention"
    Options: ClassVar[type[InterventionOptions]] = InterventionOptions
    #: the backend sends every scored distribution and every generation step through this intervention
    rescores: ClassVar[bool] = False
    #: why the intervention needs the in-process model (the refusal line on other backends)
    needs: ClassVar[str] = "hooks on the model's forward pass"

    def __init__(self, **options: Any):
        from ..options import parse_options

        self.options = {k: v for k, v in options.items() if v is not None}
        self.opts = parse_options(self.Options, self.name, self.options, kind="intervention")

    def identity(self) -> dict[str, Any]:
        """Recorded in the run identity (through the backend's ``describe()``): name and options as given."""
        return {"intervention": self.name, **self.options}

    def fingerprint(self) -> str | None:
        """What the answers depend on beyond name and options (a projection's estimated basis), once
        attached: part of the response cache's key and recorded in the run's config.json, so that answers
        made with two different estimates are never mixed in one run. ``None``: nothing beyond them."""
        return None

    def check(self, backend) -> None:
        """Refuse, in one line, a backend this intervention cannot act in."""
        from ..backends.hf import HFBackend

        if not isinstance(backend, HFBackend):
            kind = (backend.describe() or {}).get("backend", type(backend).__name__)
            raise CapabilityError(f"intervention {self.name!r} cannot run on the {kind} backend: it needs {self.needs}, "
                                  "which only the in-process hf backend offers (use --model DIR or a built-in name)")

    def attach(self, backend) -> None:
        """Install hooks on ``backend.model`` (and estimate what they need)."""

    def detach(self, backend) -> None:
        """Remove what ``attach`` installed."""

    def cost(self) -> dict[str, Any]:
        """What the intervention costs at inference: extra forward passes per scored or generated token,
        and any one-time estimation."""
        return {"extra_forward_passes": 0}

    def stats(self) -> dict[str, Any]:
        """Recorded in the run's metrics (meta.backend_stats.intervention)."""
        return {**self.identity(), "cost": self.cost()}

    # -- rescoring interventions ----------------------------------------------------------------
    def adjust_logprobs(self, backend, ids, att, positions, logprobs, lead):
        """The debiased log-probabilities at ``positions[r]`` of each row of a padded batch.

        ``ids``/``att``: the batch as the backend ran it (left or right padded); ``logprobs[r]``: the
        model's log-softmax at those positions, ``[len(positions[r]), vocab]``; ``lead[r]``: how many
        leading start tokens (BOS, [CLS]) row r has before its text."""
        return logprobs

    def logits_processor(self, backend, prompts: list[list[int]]):
        """A transformers ``LogitsProcessor`` for one ``generate`` call over ``prompts`` (token ids), or None."""
        return None


def get_intervention(name: str, **options: Any) -> Intervention:
    from ..registry import INTERVENTIONS

    return INTERVENTIONS.get(name)(**options)


@contextmanager
def applied(backend, name: str | None, options: dict[str, Any] | None = None) -> Iterator[Intervention | None]:
    """Attach intervention ``name`` to ``backend`` (through any wrapper) while the block runs; ``None``: nothing."""
    if not name:
        yield None
        return
    iv = get_intervention(name, **(options or {}))
    inner = in_process(backend)
    iv.check(inner)
    if getattr(inner, "intervention", None) is not None:
        raise UserError(f"intervention {inner.intervention.name!r} is already attached to {inner.name}; one at a time")
    iv.attach(inner)
    inner.intervention = iv
    try:
        yield iv
    finally:
        inner.intervention = None
        iv.detach(inner)
