"""A bounded burst of real completion requests against a vLLM server on loopback."""

from __future__ import annotations

import json
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from ipaddress import ip_address
from urllib.parse import urlsplit

# Words the tiny test model's tokenizer knows (tests/fixtures/tiny_model.py), one token each.
# vLLM's CPU build caches prefixes in 128-token blocks (measured: cache_config_info block_size
# 128), so prompts share a 136-token prefix: every repeat can hit one full cached block.
PREFIX_TOKENS = 136
_SHARED_PREFIX = " ".join(f"w{i % 252}" for i in range(PREFIX_TOKENS))


def prompts(count: int) -> list[str]:
    """`count` prompts: the shared prefix, then one of four 8-word endings."""
    return [f"{_SHARED_PREFIX} " + " ".join(f"w{(i % 4) * 8 + j}" for j in range(8)) for i in range(count)]


@dataclass(frozen=True)
class LoadResult:
    requests: int
    succeeded: int
    completion_tokens: int


def send_completions(base_url: str, model: str, *, count: int = 48, concurrency: int = 6,
                     max_tokens: int = 96, timeout: float = 120) -> LoadResult:
    host = urlsplit(base_url).hostname or ""
    if not ip_address(host).is_loopback:
        raise ValueError(f"load goes to loopback servers only, not {host!r}")

    def one(prompt: str) -> int:
        body = json.dumps({"model": model, "prompt": prompt, "max_tokens": max_tokens, "temperature": 0.8,
                           "ignore_eos": True}).encode()
        request = urllib.request.Request(f"{base_url}/v1/completions", data=body,
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=timeout) as resp:
            return int(json.loads(resp.read())["usage"]["completion_tokens"])

    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        results = list(pool.map(one, prompts(count)))
    return LoadResult(requests=count, succeeded=len(results), completion_tokens=sum(results))
