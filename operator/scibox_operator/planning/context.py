"""Context length: the longest max_model_len vLLM accepts for a config, and its default."""

from __future__ import annotations

from .config_reader import ConfigReader

_MAX_LEN_KEYS = ("max_position_embeddings", "n_positions", "max_seq_len", "seq_length",
                 "model_max_length", "max_target_positions", "max_sequence_length",
                 "max_seq_length", "seq_len")


def max_model_len(cfg: ConfigReader, model_type: str) -> tuple[int, int]:
    """(longest length vLLM accepts, length it uses by default), per vLLM's config rules.

    Smallest of the length keys; RoPE scaling multiplies it except for types whose
    max_position_embeddings is already scaled (llama3, yarn, longrope, ...) and for
    Gemma 3; LongRoPE models default to their original (unscaled) length.
    """
    lengths = [cfg.data[k] for k in _MAX_LEN_KEYS
               if isinstance(cfg.data.get(k), int) and not isinstance(cfg.data.get(k), bool) and cfg.data[k] > 0]
    derived = float(min(lengths)) if lengths else 2048.0
    if isinstance(cfg.data.get("model_max_length"), int) and cfg.data["model_max_length"] > 0:
        derived = float(cfg.data["model_max_length"])
    rope = cfg.raw("rope_scaling") or cfg.raw("rope_parameters")
    rope_type = None
    if isinstance(rope, dict):
        rope_type = rope.get("rope_type", rope.get("type"))
        factor = rope.get("factor")
        if ("gemma3" not in model_type and rope_type not in
                ("su", "longrope", "llama3", "yarn", "deepseek_yarn", "deepseek_llama_scaling")
                and isinstance(factor, (int, float)) and factor > 0):
            derived *= factor
    default = int(derived)
    if rope_type == "longrope":
        original = cfg.raw("original_max_position_embeddings")
        if isinstance(original, int) and original > 0:
            default = original
    return int(derived), default
