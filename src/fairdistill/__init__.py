"""fairdistill: measure social bias in language models and remove it by self-debiasing and distillation.

Four concepts: a *backend* answers model requests, a *benchmark* turns data into requests and
results into metrics, a *method* (inference-time debiasing) turns one question into a conversation,
and a *run* stores every item's result as it completes.
"""

__version__ = "0.1.0"
