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
