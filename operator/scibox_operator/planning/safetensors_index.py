"""Bytes of the weights vLLM loads, from a checkpoint's model.safetensors.index.json."""

from __future__ import annotations

import re

from .errors import PlanError
from .facts import ModelFacts
from .weights import checkpoint_bytes_of_layer, checkpoint_bytes_per_param

_LAYER_NAME = re.compile(r"(?:^|\.)layers\.(\d+)\.")


def weights_from_index(facts: ModelFacts, index: dict) -> int | None:
    """Bytes vLLM loads according to model.safetensors.index.json, None if it has no size.

    DeepSeek-V3-style checkpoints append multi-token-prediction layers (indices at or
    beyond num_hidden_layers) that vLLM skips unless speculative decoding uses them;
    their estimated size is taken off the total.
    """
    if not isinstance(index, dict):
        raise PlanError("InvalidModelConfig", "the safetensors index must be a JSON object")
    total = (index.get("metadata") or {}).get("total_size")
    if isinstance(total, str) and total.isdigit():
        total = int(total)
    if not isinstance(total, int) or isinstance(total, bool) or total <= 0:
        return None
    weight_map = index.get("weight_map") or {}
    extra_layers: dict[int, set[str]] = {}
    for name in weight_map if isinstance(weight_map, dict) else ():
        match = _LAYER_NAME.search(name)
        if match and int(match.group(1)) >= facts.num_layers:
            extra_layers.setdefault(int(match.group(1)), set()).add(name)
    if not extra_layers:
        return total
    skipped = 0.0
    for names in extra_layers.values():
        skipped += checkpoint_bytes_of_layer(facts, facts.layers[-1])
        skipped += 2 * facts.hidden_size * facts.hidden_size * checkpoint_bytes_per_param(facts, linear=True)
        matrix = facts.vocab_size * facts.hidden_size * checkpoint_bytes_per_param(facts, linear=False)
        skipped += matrix * sum(1 for part in ("embed_tokens", "shared_head.head")
                                if any(part in n for n in names))
    return max(1, total - int(skipped))
