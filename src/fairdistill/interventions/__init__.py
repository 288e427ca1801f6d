"""Model interventions: changes to how an in-process model computes, applied to a backend for a run.

Methods (:mod:`fairdistill.methods`) rewrite the *conversation*; interventions change the *model*:
its output distributions (``self-debias``) or its hidden states (``sentence-debias``, ``inlp``). An
intervention is attached to the in-process ``hf`` backend for the duration of a run
(``--intervention NAME``), so every benchmark (log-likelihood scoring, perplexities, generation,
lm-evaluation-harness) runs through it unchanged. Each lives in its own module here and registers
itself in ``INTERVENTIONS``.
"""
from .base import Intervention, applied, get_intervention

__all__ = ["Intervention", "applied", "get_intervention"]
