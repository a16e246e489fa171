"""What every text family reads alike: checkpoint dtype, quantization, context length."""

from __future__ import annotations

from ..config_reader import ConfigReader
from ..context import max_model_len
from ..numerics import normalize_dtype, scheme_from_quantization_config


def common_text_facts(cfg: ConfigReader, model_type: str) -> dict:
    """ModelFacts fields shared by all families: checkpoint dtype, quantization, lengths."""
    dtype = normalize_dtype(cfg.raw("torch_dtype", cfg.raw("dtype"))) or "float32"
    if dtype == "auto":
        dtype = "bfloat16"
    quant = cfg.raw("quantization_config")
    derived, default = max_model_len(cfg, model_type)
    return {
        "checkpoint_dtype": dtype,
        "quantization": scheme_from_quantization_config(quant) if quant else None,
        "derived_max_model_len": derived,
        "default_max_model_len": default,
    }


def tensor_parallel_constraints(heads: int, attention_width: int, *, intermediate: int | None = None,
                                expert: int | None = None, shared_expert: int | None = None
                                ) -> tuple[tuple[tuple[str, int], ...], tuple[tuple[str, int], ...]]:
    """(sizes tensor parallelism must divide, sizes its groups must align to): the attention
    heads and width, and each MLP width the model has (None: it has no such MLP)."""
    divisible = [("attention heads", heads)]
    aligned = [("attention width", attention_width)]
    for name, size in (("intermediate size", intermediate), ("expert intermediate size", expert),
                       ("shared expert intermediate size", shared_expert)):
        if size is not None:
            divisible.append((name, size))
            aligned.append((name, size))
    return tuple(divisible), tuple(aligned)
