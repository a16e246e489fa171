"""Value checks shared by the vLLM argument contract, the model cache layout and the image's
settings loader.

Each check takes (value, what) -- `what` names the value in the error -- and returns the value in
its parsed form or raises ValueError with one human sentence.  Stdlib only: the vLLM image copies
this package without the operator's dependencies.
"""

from __future__ import annotations

import math
import re
import shlex
from collections.abc import Callable
from typing import Any

__all__ = [
    "DTYPES",
    "RUNNERS",
    "KV_CACHE_DTYPES",
    "LOAD_FORMATS",
    "text",
    "word",
    "integer",
    "fraction",
    "boolean",
    "dtype",
    "runner",
    "kv_cache_dtype",
    "quantization",
    "host",
    "repo_id",
    "extra_args",
]

# vLLM 0.32's `--dtype` choices (checked against the real parser in the tests).
DTYPES = ("auto", "bfloat16", "float", "float16", "float32", "half")
# vLLM 0.32's `--runner` choices (checked against the real parser in the tests).
RUNNERS = ("auto", "draft", "generate", "pooling")
# The `--kv-cache-dtype` choices of vLLM 0.32 (CacheDType in vllm/config/cache.py) whose bytes
# per value the planner knows (planning/numerics.py): the others are device-specific (fp8_inc
# on Gaudi), MLA-only (fp8_ds_mla) or sub-byte layouts the planner would size wrongly.
KV_CACHE_DTYPES = ("auto", "bfloat16", "float16", "fp8", "fp8_e4m3", "fp8_e5m2")
# The `--load-format` values of vLLM 0.32 (its model loader registry) that read the operator's
# cache folder as the download Job leaves it: the default safetensors reader and the faster
# readers of the same files (fastsafetensors and instanttensor read whole files into GPU memory,
# the Run:ai streamer streams tensors concurrently). They need their package in the image
# (`fastsafetensors`, `instanttensor`, `runai-model-streamer`); vLLM fails at start without it.
# Not offered: formats that need another layout (sharded_state, tensorizer, npcache), a service
# (ipc_cache, modelexpress), or load no weights (dummy).
LOAD_FORMATS = ("auto", "safetensors", "fastsafetensors", "instanttensor", "runai_streamer")


def text(value: Any, what: str) -> str:
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise ValueError(f"{what} must be a string, got {value!r}")
    stripped = str(value).strip()
    if not stripped:
        raise ValueError(f"{what} must not be empty")
    if any(ord(c) < 32 or ord(c) == 127 for c in stripped):
        raise ValueError(f"{what} must not contain control characters")
    return stripped


def word(value: Any, what: str) -> str:
    parsed = text(value, what)
    if any(c.isspace() for c in parsed):
        raise ValueError(f"{what} must not contain spaces, got {parsed!r}")
    return parsed


def integer(minimum: int, maximum: int | None = None) -> Callable[[Any, str], int]:
    def parse(value: Any, what: str) -> int:
        if isinstance(value, bool):
            raise ValueError(f"{what} must be an integer, got {value!r}")
        if isinstance(value, int):
            number = value
        elif isinstance(value, str) and re.fullmatch(r"\s*[-+]?\d+\s*", value):
            number = int(value)
        else:
            raise ValueError(f"{what} must be an integer, got {value!r}")
        if number < minimum or (maximum is not None and number > maximum):
            bound = f"between {minimum} and {maximum}" if maximum is not None else f">= {minimum}"
            raise ValueError(f"{what} must be {bound}, got {number}")
        return number

    return parse


def fraction(value: Any, what: str) -> float:
    if isinstance(value, bool):
        raise ValueError(f"{what} must be a number, got {value!r}")
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{what} must be a number, got {value!r}") from None
    if not math.isfinite(number) or not 0 < number <= 1:
        raise ValueError(f"{what} must be in (0, 1], got {value!r}")
    return number


_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def boolean(value: Any, what: str) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
        return value.strip().lower() in _TRUE
    raise ValueError(f"{what} must be true or false, got {value!r}")


def dtype(value: Any, what: str) -> str:
    parsed = word(value, what).lower()
    if parsed not in DTYPES:
        raise ValueError(f"{what} must be one of {', '.join(DTYPES)}, got {value!r}")
    return parsed


def runner(value: Any, what: str) -> str:
    parsed = word(value, what).lower()
    if parsed not in RUNNERS:
        raise ValueError(f"{what} must be one of {', '.join(RUNNERS)}, got {value!r}")
def kv_cache_dtype(value: Any, what: str) -> str:
    parsed = word(value, what)
    if parsed not in KV_CACHE_DTYPES:
        raise ValueError(f"{what} must be one of {', '.join(KV_CACHE_DTYPES)}, got {value!r}")
    return parsed


def quantization(value: Any, what: str) -> str:
    parsed = word(value, what)
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.\-]*", parsed):
        raise ValueError(f"{what} must be a quantization method name like awq or fp8, got {value!r}")
    return parsed


def host(value: Any, what: str) -> str:
    parsed = word(value, what)
    if not re.fullmatch(r"[A-Za-z0-9.:\-\[\]]+", parsed):
        raise ValueError(f"{what} must be an IP address or host name, got {value!r}")
    return parsed


# org/name, or a bare name for the hub's legacy top-level models (gpt2, distilgpt2).
_REPO_ID = re.compile(r"([A-Za-z0-9][A-Za-z0-9._\-]*/)?[A-Za-z0-9][A-Za-z0-9._\-]*")


def repo_id(value: Any, what: str) -> str:
    parsed = word(value, what)
    if not _REPO_ID.fullmatch(parsed):
        raise ValueError(f"{what} must be a Hugging Face repo id like org/name or name, got {value!r}")
    # The hub refuses these too; "--" would also make two ids share one cache folder.
    for part in ("--", ".."):
        if part in parsed:
            raise ValueError(f"{what} {parsed!r} contains {part!r}, which Hugging Face repo ids may not")
    if parsed.endswith(".git") or len(parsed) > 96:
        raise ValueError(f"{what} {parsed!r} is not a Hugging Face repo id (at most 96 characters, "
                         "not ending in .git)")
    return parsed


def extra_args(value: Any, what: str) -> tuple[str, ...]:
    if isinstance(value, str):
        try:
            tokens = shlex.split(value)
        except ValueError as exc:
            raise ValueError(f"{what} is not a valid shell-quoted string: {exc}") from None
    elif isinstance(value, list) and all(isinstance(t, (str, int, float)) and not isinstance(t, bool) for t in value):
        tokens = [str(t) for t in value]
    else:
        raise ValueError(f"{what} must be a list of strings or a shell-quoted string, got {value!r}")
    return tuple(tokens)
