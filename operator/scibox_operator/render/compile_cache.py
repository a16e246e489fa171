"""Where a server keeps vLLM's torch.compile / inductor / kernel caches (VLLM_CACHE_ROOT).

vLLM compiles the model's graph at start (61 s cold vs 40 s warm for the tiny model on this
machine's CPU build); the artefacts are only valid for the same vLLM build, model weights and the
flags that shape the graph. They live on the model's cache claim in a folder named by
`compile_cache_key`, so the second pod of a VLLMDeployment and every restart start warm, and two
configurations never share a folder. Pure.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable, Mapping

from scibox_operator.api.names import COMPILE_CACHE_SUBDIR

# Flags that cannot change what vLLM compiles: names, the listener, logging, how the weights are
# read (not what they are). Every other flag, known or not, goes into the key: an unknown flag
# costs at worst one extra cold start, a wrongly shared cache a broken or wrong server.
NEUTRAL_FLAGS = frozenset({"--served-model-name", "--host", "--port", "--disable-log-stats",
                           "--load-format", "--disable-log-requests", "--enable-log-requests",
                           "--uvicorn-log-level"})

# Environment variables that can change what vLLM, torch or triton compile (backends, fusion,
# kernels, thread counts baked into CPU kernels); other variables are not in the key.
GRAPH_ENV_PREFIXES = ("VLLM_", "TORCH", "PYTORCH", "TRITON", "INDUCTOR", "CUDA", "NVIDIA", "ROCM", "HIP",
                      "OMP_", "MKL", "KMP_")

_VLLM_VERSION = re.compile(r"(?:vllm-?|^v)(\d+\.\d+\.\d+(?:\.post\d+)?)")


def vllm_version_of_image(image: str) -> str | None:
    """vLLM's version as the image tag spells it (`...:0.1.0-vllm0.32.0`, `vllm/vllm-openai:v0.32.0`)."""
    tag = image.rsplit("@", 1)[0]
    tag = tag.rsplit(":", 1)[1] if ":" in tag.rsplit("/", 1)[-1] else ""
    match = _VLLM_VERSION.search(tag)
    return match.group(1) if match else None


def _graph_args(args: Iterable[str]) -> list[str]:
    """The rendered vLLM arguments minus the NEUTRAL_FLAGS (with their values)."""
    out: list[str] = []
    skip_value = False
    for token in args:
        if skip_value:
            skip_value = False
            if not token.startswith("-"):
                continue
        flag = token.split("=", 1)[0]
        if flag in NEUTRAL_FLAGS:
            skip_value = "=" not in token
            continue
        out.append(token)
    return out


def compile_cache_key(*, image: str, model: str, revision: str | None, gpu_product: str | None,
                      args: Iterable[str], env: Mapping[str, str]) -> str:
    """A folder name for one compile configuration: `vllm<version>-<digest>`.

    The digest covers the image (the vLLM build: its version, torch and triton), the model and
    revision (the weights' shapes), the GPU product (kernels are tuned per device) and every
    argument and environment variable (GRAPH_ENV_PREFIXES) that can change the compiled graph (parallel sizes, dtype,
    quantization, KV cache dtype, max lengths and batch sizes, compilation config, ...).
    """
    material = json.dumps({"image": image, "model": model, "revision": revision or "main",
                           "gpu": gpu_product or "", "args": _graph_args(args),
                           "env": sorted((k, v) for k, v in env.items() if k.startswith(GRAPH_ENV_PREFIXES))},
                          sort_keys=True)
    digest = hashlib.sha256(material.encode()).hexdigest()[:16]
    version = vllm_version_of_image(image)
    return f"vllm{version}-{digest}" if version else f"image-{digest}"


def compile_cache_subpath(key: str) -> str:
    """The folder inside the model's cache claim (the claim's root is the server's /models)."""
    return f"{COMPILE_CACHE_SUBDIR}/{key}"
