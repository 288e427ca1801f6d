"""Training-side debiasing: FairDistillation (rule-rewritten teacher distributions), counterfactual data
augmentation (CDA), self-distillation of an inference-time method into a LoRA adapter, and CMAF
adjudicated fine-tuning sets.

Entry points for the CLI: :func:`run_fairdistill`, :func:`run_cda` and :func:`run_self_distill`. Heavy imports
(torch, transformers, peft) happen inside the submodules, so importing this package is cheap.
"""
from __future__ import annotations

from typing import Any


def run_fairdistill(*args: Any, **kwargs: Any):
    from .fairdistill import run_fairdistill as _run

    return _run(*args, **kwargs)


def run_cda(*args: Any, **kwargs: Any):
    from .cda import run_cda as _run

    return _run(*args, **kwargs)


def run_self_distill(*args: Any, **kwargs: Any):
    from .self_distill import run_self_distill as _run

    return _run(*args, **kwargs)


run_fairdistill.__doc__ = "See :func:`fairdistill.distill.fairdistill.run_fairdistill`."
run_cda.__doc__ = "See :func:`fairdistill.distill.cda.run_cda`."
run_self_distill.__doc__ = "See :func:`fairdistill.distill.self_distill.run_self_distill`."

__all__ = ["run_fairdistill", "run_cda", "run_self_distill"]
