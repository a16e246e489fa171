"""The plan a VLLMDeployment is served with, kept in its status, so that a hub that cannot be read
after an operator restart never turns a serving model Failed nor resizes its cache."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from scibox_operator.api.spec import VLLMDeployment, short_hash
from scibox_operator.planning.serving_plan import ServingPlan, cache_claim_name


def plan_inputs(vd: VLLMDeployment) -> str:
    """A digest of every spec field the plan depends on: a kept plan is reused only while the
    spec still asks for what it was made for."""
    spec = vd.spec
    inputs = {
        "model": spec.model.model_dump(mode="json"),
        "resources": spec.resources.model_dump(mode="json"),
        "parallelism": spec.parallelism.model_dump(mode="json"),
        # which GPU nodes match decides the GPU type and the nodes per replica
        "nodeSelector": dict(sorted(spec.node_selector.items())),
        "gpuMemoryUtilization": spec.engine.gpu_memory_utilization,
        "cacheSize": spec.cache.size,
        # Added only when set, so that the digest of a spec without them (and so every plan
        # kept before they existed) stays what it was: an operator upgrade re-plans nothing.
        **_set_only({"maxNumSeqs": spec.engine.max_num_seqs,
                     "maxNumBatchedTokens": spec.engine.max_num_batched_tokens,
                     "kvCacheDtype": spec.engine.kv_cache_dtype,
                     "targetConcurrentSequences": spec.engine.target_concurrent_sequences}),
    }
    return short_hash(json.dumps(inputs, sort_keys=True), length=16)


def _set_only(values: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in values.items() if v is not None}


def last_known_plan(vd: VLLMDeployment, status: Mapping[str, Any], *, cache_shared: bool,
                    image: str) -> ServingPlan | None:
    """The plan in status when it was made for these inputs, else None."""
    kept = status.get("plan") or {}
    if not kept or kept.get("inputs") != plan_inputs(vd):
        return None
    try:
        tp, pp = int(status["tensorParallelSize"]), int(status["pipelineParallelSize"])
        gpus, nodes = int(status["gpusPerReplica"]), int(kept["nodesPerReplica"])
        cache_size = str(kept["cacheSize"])
        weights = int(kept["weightBytesPerPod"]) if kept.get("weightBytesPerPod") is not None else None
        product = str(kept["gpuProduct"]) if kept.get("gpuProduct") else None
    except (KeyError, TypeError, ValueError):
        return None
    return ServingPlan(tp, pp, gpus, str(status.get("parallelismReason") or ""), cache_claim_name(vd, cache_shared),
                       cache_shared, cache_size, vd.spec.image or image, max(1, nodes), weight_bytes_per_pod=weights,
                       gpu_product=product)
