"""Load and unload a VLLMDeployment's LoRA adapters on its running servers, from the prober's
round (vLLM's runtime endpoints: /v1/load_lora_adapter, /v1/unload_lora_adapter; the servers
run with VLLM_ALLOW_RUNTIME_LORA_UPDATING, render/deployment.py).

`plan_pod_adapters` (pure) decides what to load and unload on one pod from what its
/v1/models lists; `AdapterLoader` makes the calls, only to pods the prober already found to be
the operator's own (ownership.py) and serving, and holds a pod back from counting as serving
until every downloaded adapter is loaded on it (a restarted server gets its adapters first).
A broken adapter is reported and fails only itself: the base model keeps serving.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Mapping
from dataclasses import replace
from typing import Any

import aiohttp

from scibox_operator.api.spec import VLLMDeployment
from scibox_operator.planning.adapters import WantedAdapter, adapter_job_name, lora_enabled, wanted_adapters
from scibox_operator.readiness.ownership import controller_of
from scibox_operator.readiness.probe import _fetch, _Unreachable
from scibox_operator.readiness.verdicts import ProbeReason, ProbeResult
from scibox_operator.reconcile.adapters import (
    DOWNLOADING,
    FAILED,
    LOADED,
    PENDING,
    PodAdapterState,
    adapter_download_states,
)
from scibox_operator.runtime.store import Key, Store

log = logging.getLogger(__name__)

# A load that failed is tried again on that pod after this long (or at once when the adapter's
# path changes): vLLM answers every failed load with a 500, transient or not.
RETRY_SECONDS = 300.0


def loaded_adapters(models_body: str, base_name: str) -> dict[str, str]:
    """adapter name -> its path (`root`), from a /v1/models answer: the entries that are not
    the base model (vLLM lists adapters with `parent` set to the base)."""
    try:
        data = json.loads(models_body).get("data") or []
    except (ValueError, AttributeError):
        return {}
    if not isinstance(data, list):
        return {}
    return {str(m.get("id")): str(m.get("root") or "") for m in data
            if isinstance(m, dict) and m.get("id") != base_name and m.get("parent")}


def plan_pod_adapters(wanted: tuple[WantedAdapter, ...], downloaded: frozenset[str], loaded: Mapping[str, str],
                      failed: Mapping[str, str]) -> tuple[tuple[WantedAdapter, ...], tuple[str, ...]]:
    """(adapters to load, adapter names to unload) on one pod. `failed`: adapter -> the path
    whose load failed recently (not retried until RETRY_SECONDS or a new path). An adapter
    whose path changed (a new revision) is unloaded and loaded again."""
    by_name = {w.name: w for w in wanted}
    unload = tuple(sorted(name for name, path in loaded.items()
                          if name not in by_name or (path and path != by_name[name].path
                                                     and not path.endswith("/" + by_name[name].path))))
    load = tuple(w for w in wanted if w.name in downloaded and failed.get(w.name) != w.path
                 and (w.name not in loaded or w.name in unload))
    return load, unload


def _error_message(status: int, body: str) -> str:
    try:
        err = json.loads(body).get("error") or {}
        message = err.get("message") if isinstance(err, dict) else str(err)
    except (ValueError, AttributeError):
        message = None
    return f"HTTP {status}: {(message or body or 'no message').strip()[:300]}"


class AdapterLoader:
    def __init__(self, store: Store, retry_seconds: float = RETRY_SECONDS):
        self.store = store
        self.retry_seconds = retry_seconds
        # vd key -> (pod uid, adapter) -> (path, message, when) of the last failed load
        self._failed: dict[Key, dict[tuple[str, str], tuple[str, str, float]]] = {}
        # vd key -> this round's states (published at its end)
        self._round: dict[Key, list[PodAdapterState]] = {}

    async def on_probe(self, session: aiohttp.ClientSession | None, vd: VLLMDeployment, pod: dict[str, Any],
                       base_url: str, result: ProbeResult, *, api_key: str | None, timeout: float) -> ProbeResult:
        """After the base probe of one of our pods: sync its adapters when it serves; returns the
        result, turned Loading while a downloaded adapter is not yet loaded on it."""
        if session is None or not lora_enabled(vd):
            return result
        key = (vd.namespace, vd.name)
        states = self._round.setdefault(key, [])
        pod_name = str(pod["metadata"].get("name"))
        wanted = wanted_adapters(vd)
        if not result.ready:
            states.extend((w.name, pod_name, PENDING, "the server is not serving yet") for w in wanted)
            return result
        downloads = adapter_download_states(vd, self._jobs(vd), self._reports(vd))
        downloaded = frozenset(name for name, state in downloads.items() if state.complete)
        uid = str(pod["metadata"].get("uid"))
        failures = self._failed.setdefault(key, {})
        now = time.monotonic()
        failed = {name: path for (p, name), (path, _, when) in failures.items()
                  if p == uid and now - when < self.retry_seconds}
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        client_timeout = aiohttp.ClientTimeout(total=timeout)
        load_timeout = aiohttp.ClientTimeout(total=max(timeout, 30.0))  # reads the adapter's files
        base = vd.spec.model.served_name
        try:
            status, body = await _fetch(session, "GET", base_url, "/v1/models", headers=headers, timeout=client_timeout)
            loaded = loaded_adapters(body, base) if status == 200 else {}
            load, unload = plan_pod_adapters(wanted, downloaded, loaded, failed)
            for name in unload:
                status, body = await _fetch(session, "POST", base_url, "/v1/unload_lora_adapter", headers=headers,
                                            timeout=client_timeout, payload={"lora_name": name})
                if status == 200 or status == 404:
                    loaded.pop(name, None)
                    log.info("%s/%s: adapter %s unloaded from pod %s", *key, name, pod_name)
                else:
                    log.warning("%s/%s: unloading adapter %s from pod %s: %s", *key, name, pod_name,
                                _error_message(status, body))
            for adapter in load:
                status, body = await _fetch(session, "POST", base_url, "/v1/load_lora_adapter", headers=headers,
                                            timeout=load_timeout,
                                            payload={"lora_name": adapter.name, "lora_path": adapter.path})
                if status == 200:
                    loaded[adapter.name] = adapter.path
                    failures.pop((uid, adapter.name), None)
                    log.info("%s/%s: adapter %s loaded on pod %s", *key, adapter.name, pod_name)
                else:
                    message = _error_message(status, body)
                    failures[(uid, adapter.name)] = (adapter.path, message, now)
                    failed[adapter.name] = adapter.path
                    log.warning("%s/%s: adapter %s failed to load on pod %s: %s", *key, adapter.name, pod_name,
                                message)
        except _Unreachable as unreachable:
            states.extend((w.name, pod_name, PENDING, f"server unreachable: {unreachable}") for w in wanted)
            return result
        pending = []
        for w in wanted:
            if w.name in loaded:
                states.append((w.name, pod_name, LOADED, ""))
            elif w.name in failed:
                message = failures.get((uid, w.name), (w.path, "load failed", now))[1]
                states.append((w.name, pod_name, FAILED, message))
            elif w.name not in downloaded:
                download = downloads.get(w.name)
                if download is not None and download.failed:
                    states.append((w.name, pod_name, FAILED, "its download failed"))
                else:
                    states.append((w.name, pod_name, DOWNLOADING, "waiting for its download"))
            else:
                states.append((w.name, pod_name, PENDING, "to be loaded"))
                pending.append(w.name)
        if pending:
            return replace(result, ready=False, reason=ProbeReason.LOADING,
                           message=f"{result.base_url}: loading adapters {', '.join(pending)}")
        return result

    def publish(self, key: Key, pod_uids: set[str]) -> bool:
        """End of a round for one VLLMDeployment: store its states; True when they changed.
        Failure memory of pods that are gone is dropped."""
        states = tuple(sorted(self._round.pop(key, [])))
        failures = self._failed.get(key)
        if failures:
            for pair in [p for p in failures if p[0] not in pod_uids]:
                failures.pop(pair)
        if not states and key not in self.store.adapters:
            return False
        if self.store.adapters.get(key) == states:
            return False
        if states:
            self.store.adapters[key] = states
        else:
            self.store.adapters.pop(key, None)
        return True

    def _jobs(self, vd: VLLMDeployment) -> dict[str, dict[str, Any]]:
        """The adapters' download Jobs that carry this VLLMDeployment's controller reference."""
        out = {}
        for adapter in vd.spec.adapters:
            if not adapter.is_pvc:
                name = adapter_job_name(vd, adapter)
                job = self.store.child("Job", vd.namespace, name)
                if job is not None and controller_of(job.get("metadata") or {}) is not None \
                        and (controller_of(job["metadata"]) or {}).get("uid") == vd.uid:
                    out[name] = job
        return out

    def _reports(self, vd: VLLMDeployment) -> dict[str, dict[str, Any]]:
        return {name: report for name in self._jobs(vd) if (report := self.store.downloads.get((vd.namespace, name)))}
