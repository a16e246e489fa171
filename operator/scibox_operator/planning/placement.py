"""Which tensor x pipeline layouts exist: TP sizes vLLM can shard, GPUs per node, search order."""

from __future__ import annotations

from .facts import ModelFacts
from .numerics import QuantScheme


def tensor_parallel_problem(model: ModelFacts, tp: int, scheme: QuantScheme | None = None) -> str | None:
    """Why vLLM cannot shard this model `tp` ways, or None when it can."""
    heads = model.num_attention_heads
    if heads % tp:
        return f"attention heads ({heads}) not divisible by tensor parallel size {tp}"
    if not model.kv_cache_is_latent:
        kv = model.num_kv_heads
        if kv % tp and tp % kv:
            return (f"{kv} KV heads can be neither split nor replicated evenly over "
                    f"tensor parallel size {tp}")
    for what, size in model.tp_divisible:
        if size % tp:
            return f"{what} ({size}) not divisible by tensor parallel size {tp}"
    if scheme and scheme.group_size and tp > 1:
        for what, size in model.tp_group_aligned:
            if size % tp == 0 and (size // tp) % scheme.group_size:
                return (f"{what} ({size}) split {tp} ways is {size // tp}, not a multiple of the "
                        f"{scheme.method} group size {scheme.group_size}")
    return None


def valid_tensor_parallel_sizes(model: ModelFacts, limit: int, scheme: QuantScheme | None = None) -> list[int]:
    return [tp for tp in range(1, limit + 1) if tensor_parallel_problem(model, tp, scheme) is None]


def place(tp: int, pp: int, gpus_per_node: int) -> tuple[int, int] | None:
    """(nodes, GPUs used per node) for a layout: TP inside a node, whole stages per node,
    the same count on every node; None when a TP group is wider than a node."""
    if tp > gpus_per_node:
        return None
    for nodes in range(1, pp + 1):
        if pp % nodes == 0 and tp * (pp // nodes) <= gpus_per_node:
            return nodes, tp * (pp // nodes)
    return None  # unreachable: nodes == pp always places


def candidate_layouts(model: ModelFacts, gpus_per_node: int, tp_fixed: int | None, pp_fixed: int | None,
                      max_nodes: int | None, scheme: QuantScheme | None) -> list[tuple[int, int, int, int]]:
    """Layouts (tp, pp, nodes, gpus per node) in the order they are tried.

    When both sizes are ours to choose we follow vLLM's guidance: tensor parallelism
    inside one node (each valid TP size, smallest first); when the widest TP size a node
    allows is not enough, that TP group is repeated as pipeline stages, across nodes
    (one stage per node when the TP group fills a node). Pipeline stages share a node
    only when no TP size the model allows fills it (e.g. 28 heads on 8-GPU nodes).
    A given size is kept and the other one searched. Order: fewest GPUs, then fewest
    nodes, then the widest TP.
    """
    valid = valid_tensor_parallel_sizes(model, gpus_per_node, scheme)
    pairs: list[tuple[int, int]] = []
    if tp_fixed is None and pp_fixed is None:
        pairs += [(tp, 1) for tp in valid]
        pairs += [(valid[-1], pp) for pp in range(2, model.num_layers + 1)]
    elif tp_fixed is None:
        pairs += [(tp, pp_fixed) for tp in valid]
    elif pp_fixed is None:
        pairs += [(tp_fixed, pp) for pp in range(1, model.num_layers + 1)]
    else:
        pairs.append((tp_fixed, pp_fixed))
    layouts = []
    for tp, pp in pairs:
        placed = place(tp, pp, gpus_per_node)
        if placed is None or (max_nodes is not None and placed[0] > max_nodes):
            continue
        layouts.append((tp, pp, *placed))
    layouts.sort(key=lambda layout: (layout[0] * layout[1], layout[2], -layout[0]))
    return layouts
