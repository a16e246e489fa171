"""Bytes per value: serving dtypes, quantization schemes and KV-cache dtypes."""

from __future__ import annotations

from dataclasses import dataclass

from .errors import PlanError

DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}

_DTYPE_ALIASES = {
    "float32": "float32", "fp32": "float32", "float": "float32",
    "bfloat16": "bfloat16", "bf16": "bfloat16",
    "float16": "float16", "fp16": "float16", "half": "float16",
}


def normalize_dtype(name: str | None) -> str | None:
    """A checkpoint or requested dtype in canonical form, "auto" or None for unknown."""
    if name is None:
        return None
    text = str(name).strip().lower().removeprefix("torch.")
    if text == "auto":
        return "auto"
    return _DTYPE_ALIASES.get(text)


def resolve_serving_dtype(requested: str, checkpoint_dtype: str, *, bf16_supported: bool) -> str:
    """The dtype vLLM computes in, following its `--dtype auto` rules.

    auto keeps a 16-bit checkpoint dtype and runs float32 checkpoints in 16 bit
    (vLLM downcasts them: full-precision serving is never the intent); bfloat16 on a
    GPU without bf16 (T4, V100) becomes float16, as vLLM does for auto.
    """
    dtype = normalize_dtype(requested or "auto")
    if dtype is None:
        raise PlanError("UnsupportedDtype",
                        f"dtype {requested!r} is not one of auto, bfloat16, float16, float32")
    if dtype == "auto":
        dtype = checkpoint_dtype if checkpoint_dtype in ("bfloat16", "float16") else "bfloat16"
        if dtype == "bfloat16" and not bf16_supported:
            dtype = "float16"
    elif dtype == "bfloat16" and not bf16_supported:
        raise PlanError("UnsupportedDtype", "this GPU has no bfloat16 support; use float16")
    return dtype


@dataclass(frozen=True)
class QuantScheme:
    """How linear-layer weights are stored.

    bytes_per_weight includes the per-group scales and zero points.  `group_size` is
    the number of input elements sharing one scale: each tensor-parallel shard of a
    row-parallel layer must hold whole groups.
    """

    method: str
    bytes_per_weight: float
    group_size: int | None = None
    online: bool = False  # quantized by vLLM at load time from a 16-bit checkpoint

    def to_json(self) -> dict:
        return {"method": self.method, "bytesPerWeight": self.bytes_per_weight,
                "groupSize": self.group_size}


# quant_method spellings in config.json (and vLLM's --quantization names) -> family.
_METHOD_FAMILY = {
    "fp8": "fp8", "fbgemm_fp8": "fp8", "modelopt": "modelopt", "ptpc_fp8": "fp8",
    "awq": "awq", "awq_marlin": "awq",
    "gptq": "gptq", "gptq_marlin": "gptq", "gptq_marlin_24": "gptq",
    "bitsandbytes": "bitsandbytes",
    "compressed-tensors": "compressed-tensors", "compressed_tensors": "compressed-tensors",
    "mxfp4": "mxfp4", "modelopt_fp4": "nvfp4", "nvfp4": "nvfp4",
    "experts_int8": "int8", "int8": "int8", "w8a8": "int8",
}

# The only methods vLLM applies to an unquantized checkpoint while loading it.
ONLINE_METHODS = ("fp8", "bitsandbytes", "int8")


def _group_overhead(bits: float, group_size: int | None, scale_bytes: float = 2.0) -> float:
    """Bytes per weight: packed values plus one scale and one zero point per group."""
    base = bits / 8
    if group_size and group_size > 0:
        base += (scale_bytes + bits / 8) / group_size
    return base


def scheme_from_quantization_config(qc: dict) -> QuantScheme:
    """The storage scheme of a checkpoint's `quantization_config`."""
    if not isinstance(qc, dict):
        raise PlanError("InvalidModelConfig", "quantization_config is not an object")
    method = str(qc.get("quant_method", "")).strip().lower()
    family = _METHOD_FAMILY.get(method)
    if family is None:
        raise PlanError("UnsupportedQuantization",
                        f"quantization method {method or '(none)'!r} is not supported by the planner")
    if family == "fp8":
        block = qc.get("weight_block_size")
        group = int(block[1]) if isinstance(block, (list, tuple)) and len(block) == 2 else None
        # One float32 scale per 128x128 block (or per channel): well under 0.1 % here.
        return QuantScheme("fp8", 1.0 + (4 / (group * group) if group else 0.0), group)
    if family in ("awq", "gptq"):
        bits = _positive_int(qc.get("bits", qc.get("w_bit", 4)), "quantization_config.bits")
        group = qc.get("group_size", qc.get("q_group_size", 128))
        group = int(group) if isinstance(group, int) and group > 0 else None
        return QuantScheme(family, _group_overhead(bits, group), group)
    if family == "bitsandbytes":
        if qc.get("load_in_4bit"):
            # 4-bit values plus one float32 absmax per 64-value block.
            return QuantScheme("bitsandbytes", 0.5 + 4 / 64, None)
        return QuantScheme("bitsandbytes", 1.0, None)
    if family == "int8":
        return QuantScheme("int8", 1.0, None)
    if family == "mxfp4":
        return QuantScheme("mxfp4", 0.5 + 1 / 32, 32)       # 1-byte scale per 32 values
    if family == "nvfp4":
        return QuantScheme("nvfp4", 0.5 + 1 / 16, 16)       # fp8 scale per 16 values
    if family == "modelopt":
        algo = str(qc.get("quant_algo", qc.get("quantization", {}).get("quant_algo", "FP8"))).upper()
        if "FP4" in algo:
            return QuantScheme("nvfp4", 0.5 + 1 / 16, 16)
        return QuantScheme("fp8", 1.0, None)
    # compressed-tensors: the weights entry of its (first) config group says it all.
    groups = qc.get("config_groups") or {}
    weights = None
    for group in groups.values() if isinstance(groups, dict) else ():
        if isinstance(group, dict) and isinstance(group.get("weights"), dict):
            weights = group["weights"]
            break
    if weights is None:
        raise PlanError("UnsupportedQuantization",
                        "compressed-tensors config has no weights quantization group")
    bits = _positive_int(weights.get("num_bits", 8), "num_bits")
    group = weights.get("group_size")
    group = int(group) if isinstance(group, int) and group > 0 else None
    if str(weights.get("type", "int")).lower() == "float" and bits == 4:
        return QuantScheme("nvfp4", 0.5 + 1 / 16, group or 16)
    return QuantScheme("compressed-tensors", _group_overhead(bits, group), group)


def scheme_for_requested(method: str) -> QuantScheme:
    """The scheme vLLM uses for `--quantization METHOD` on an unquantized checkpoint."""
    family = _METHOD_FAMILY.get(method.strip().lower())
    if family == "fp8":
        return QuantScheme("fp8", 1.0, None, online=True)
    if family == "bitsandbytes":
        return QuantScheme("bitsandbytes", 0.5 + 4 / 64, None, online=True)
    if family == "int8":
        return QuantScheme("int8", 1.0, None, online=True)
    if family is None:
        raise PlanError("UnsupportedQuantization", f"quantization {method!r} is not known to the planner")
    raise PlanError(
        "UnsupportedQuantization",
        f"quantization {method!r} needs a checkpoint that was quantized with it; vLLM can "
        f"only quantize at load time with {', '.join(ONLINE_METHODS)}",
    )


def same_family(method_a: str, method_b: str) -> bool:
    return _METHOD_FAMILY.get(method_a.lower()) == _METHOD_FAMILY.get(method_b.lower())


def kv_cache_dtype_bytes(kv_cache_dtype: str, serving_dtype: str) -> int:
    text = (kv_cache_dtype or "auto").strip().lower()
    if text == "auto":
        return DTYPE_BYTES[serving_dtype]
    if text in ("fp8", "fp8_e4m3", "fp8_e5m2", "fp8_inc", "fp8_ds_mla"):
        return 1
    dtype = normalize_dtype(text)
    if dtype in DTYPE_BYTES:
        return DTYPE_BYTES[dtype]
    raise PlanError("UnsupportedDtype", f"KV-cache dtype {kv_cache_dtype!r} is not known")


def _positive_int(value, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise PlanError("InvalidModelConfig", f"{what} must be a positive integer, got {value!r}")
    return value
