"""fairdistill: measure social bias in language models and remove it by self-debiasing and distillation.

Four concepts: a *backend* answers model requests, a *benchmark* turns data into requests and
results into metrics, a *method* (inference-time debiasing) turns one question into a conversation,
and a *run* stores every item's result as it completes.

The public Python API (``import fairdistill as fd``): :func:`evaluate`, :func:`compare`, :func:`report`,
:func:`run_study`, the :class:`Run` and :class:`Comparison` they return, and the errors they raise.
"""

from ._version import __version__  # noqa: E402

# the submodules named like API functions are imported first: a submodule's first import sets the package
# attribute of its name, so the functions are bound after them and stay what fd.compare / fd.report mean
from . import compare as _compare_module, report as _report_module  # noqa: E402,F401
from .api import Comparison, Run, compare, evaluate, report, run_study  # noqa: E402
from .errors import CapabilityError, UserError  # noqa: E402

__all__ = ["evaluate", "compare", "report", "run_study", "Run", "Comparison", "UserError", "CapabilityError",
           "__version__"]
