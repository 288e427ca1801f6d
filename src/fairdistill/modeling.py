"""What a transformers model looks like inside: its layer count and the ModuleList of its blocks."""
from __future__ import annotations

from .errors import UserError


def _num_layers(config) -> int:
    for attr in ("num_hidden_layers", "n_layer", "num_layers"):
        n = getattr(config, attr, None)
        if isinstance(n, int):
            return n
    raise UserError(f"cannot find the layer count of a {type(config).__name__}")


def layer_list_name(model) -> str:
    """Dotted name of the model's ModuleList of transformer blocks (``transformer.h``, ``model.layers``,
    ``bert.encoder.layer``): the outermost ModuleList whose length is the configured layer count."""
    import torch.nn as nn

    n = _num_layers(model.config)
    names = [name for name, m in model.named_modules() if isinstance(m, nn.ModuleList) and len(m) == n]
    if not names:
        raise UserError(f"cannot find the transformer blocks of {type(model).__name__} to build a layer subset")
    return min(names, key=lambda s: s.count("."))
