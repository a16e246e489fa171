"""The reconcile loop: observed state in memory, one work queue, writes only on difference.

kopf delivers watch events (see main.py); they land in `Store` and mark the owning
VLLMDeployment dirty. Workers take dirty keys from the queue and run `reconcile`: parse, plan,
render, apply what differs, write status if it changed. Steady state therefore costs no API
request at all: every comparison is against the watch cache.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Iterable

import aiohttp

from . import metrics
from .hub import HubClient, HubError
from .kube import KINDS, ApiError, KubeClient, list_objects
from .diff import needs_apply
from .policy import AdminPolicy, policy_violation
from .probe import ReadinessSummary
from .render.cache import download_job_name, render_cache_pvc, render_download_job
from .render.common import MANAGED_BY, MANAGED_BY_LABEL, OWNER_NAME_LABEL
from .render.deployment import render_deployment
from .render.leaderworkerset import INSTALL_HINT, leader_worker_set_name, render_leader_worker_set
from .render.monitoring import render_service_monitor
from .render.network_policy import render_network_policy
from .render.service import endpoint_url, render_service
from .serving import (DEFAULT_VLLM_IMAGE, GpuNode, PlanFailure, ServingPlan, decide_serving_plan,
                      gpu_node_from_body)
from .spec import InvalidSpec, VLLMDeployment, parse
from .status import CacheState, Failure, compute_status, status_differs

log = logging.getLogger(__name__)

Key = tuple[str, str]  # (namespace, name)
RWX_ANNOTATION = "scibox.io/access-modes"
SERVICE_MONITOR_CRD = "servicemonitors.monitoring.coreos.com"
LEADER_WORKER_SET_CRD = "leaderworkersets.leaderworkerset.x-k8s.io"
WATCHED_CRDS = (SERVICE_MONITOR_CRD, LEADER_WORKER_SET_CRD)


def crd_established(body: Any) -> bool:
    return any(c.get("type") == "Established" and c.get("status") == "True"
               for c in (body.get("status") or {}).get("conditions") or [])


@dataclass
class Settings:
    workers: int = int(os.environ.get("SCIBOX_WORKERS", "16"))
    resync_seconds: float = float(os.environ.get("SCIBOX_RESYNC_SECONDS", "600"))
    vllm_image: str = DEFAULT_VLLM_IMAGE
    hub_endpoint: str = os.environ.get("SCIBOX_HUB_ENDPOINT", "https://huggingface.co")
    forbid_trust_remote_code: bool = os.environ.get("SCIBOX_FORBID_TRUST_REMOTE_CODE", "") in ("1", "true")
    max_backoff: float = 300.0
    # API keys and hub tokens are re-read this often, so a rotated Secret is picked up.
    secret_ttl: float = float(os.environ.get("SCIBOX_SECRET_TTL_SECONDS", "60"))


TRANSIENT_MAX_BACKOFF = 15.0


def _transient(exc: BaseException) -> bool:
    if isinstance(exc, ApiError):
        return exc.status in (0, 408, 429) or exc.status >= 500
    if isinstance(exc, HubError):
        return not exc.permanent
    return True  # connection refused/reset, timeouts


def storage_class_summary(body: Any) -> dict[str, Any]:
    meta = body.get("metadata") or {}
    return {"metadata": {"name": meta.get("name"), "annotations": dict(meta.get("annotations") or {})}}


def _trim(body: Any) -> dict[str, Any]:
    """Keep what comparisons and status need; managedFields alone is often half an object.
    Shallow: every watch event brings a fresh body and nothing here mutates a stored one."""
    obj = dict(body)
    obj["metadata"] = {k: v for k, v in (obj.get("metadata") or {}).items() if k != "managedFields"}
    return obj


def _newer(version: str, than: str) -> bool:
    """resourceVersions are etcd revisions (integers) on every real API server; anything else
    counts as newer when it differs."""
    try:
        return int(version) > int(than)
    except ValueError:
        return version != than


class ChildRejected(Exception):
    """The API server refused a rendered child as invalid: retrying cannot help, the spec must
    change (for example a node selector or toleration the API's own validation rejects)."""

    def __init__(self, kind: str, name: str, message: str):
        super().__init__(f"the API server refused the {kind} {name} rendered from this spec: {message}")
        self.kind, self.name, self.message = kind, name, message


@dataclass
class Store:
    """The operator's view of the cluster, fed by watch events."""

    vllmds: dict[Key, dict[str, Any]] = field(default_factory=dict)
    # kind -> (namespace, name) -> object, for the kinds the operator renders
    children: dict[str, dict[Key, dict[str, Any]]] = field(default_factory=dict)
    nodes: dict[str, GpuNode] = field(default_factory=dict)
    storage_classes: dict[str, dict[str, Any]] = field(default_factory=dict)
    pods: dict[Key, dict[str, Any]] = field(default_factory=dict)
    # (namespace, VLLMDeployment name) -> names of its server pods: the prober's lookup per
    # object must not scan every pod of the cluster (that was quadratic at 1000 objects)
    pods_by_owner: dict[Key, set[str]] = field(default_factory=dict)
    readiness: dict[Key, ReadinessSummary] = field(default_factory=dict)
    # (namespace, job name) -> the download script's JSON report of its latest finished pod
    downloads: dict[Key, dict[str, Any]] = field(default_factory=dict)
    established_crds: set[str] = field(default_factory=set)
    # key -> (resourceVersion, the parsed spec or None when invalid): other objects' specs are
    # read on every pass of a shared cache's users, and parsing them anew each time was
    # quadratic in CPU and held N parsed copies per concurrent pass (1.4 GB at 300 users).
    parsed_vllmds: dict[Key, tuple[str, VLLMDeployment | None]] = field(default_factory=dict)

    def parsed(self, key: Key) -> VLLMDeployment | None:
        """The stored VLLMDeployment parsed once per version, or None when absent or invalid."""
        body = self.vllmds.get(key)
        if body is None:
            self.parsed_vllmds.pop(key, None)
            return None
        version = (body.get("metadata") or {}).get("resourceVersion", "")
        known = self.parsed_vllmds.get(key)
        if known is not None and known[0] == version and version:
            return known[1]
        try:
            vd: VLLMDeployment | None = parse(body)
        except InvalidSpec:
            vd = None
        self.parsed_vllmds[key] = (version, vd)
        return vd

    def forget_vllmd(self, key: Key) -> None:
        self.vllmds.pop(key, None)
        self.parsed_vllmds.pop(key, None)
        self.readiness.pop(key, None)

    @property
    def service_monitor_crd(self) -> bool:
        return SERVICE_MONITOR_CRD in self.established_crds

    @property
    def leader_worker_set_crd(self) -> bool:
        return LEADER_WORKER_SET_CRD in self.established_crds

    def child(self, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        return self.children.get(kind, {}).get((namespace, name))

    def put_child(self, kind: str, body: Any) -> None:
        meta = body["metadata"]
        self.children.setdefault(kind, {})[(meta["namespace"], meta["name"])] = _trim(body)

    def drop_child(self, kind: str, namespace: str, name: str) -> None:
        self.children.get(kind, {}).pop((namespace, name), None)

    def owners_of(self, body: Any) -> list[Key]:
        meta = body.get("metadata") or {}
        ns = meta.get("namespace", "")
        keys = [(ns, ref["name"]) for ref in meta.get("ownerReferences") or []
                if ref.get("kind") == "VLLMDeployment"]
        label = (meta.get("labels") or {}).get(OWNER_NAME_LABEL)
        if label:
            keys.append((ns, label))
        cache = (meta.get("labels") or {}).get("scibox.io/model-cache")
        if cache:  # every user of a (shared) cache claim cares about its Job
            keys.extend(k for k, v in self.vllmds.items()
                        if k[0] == ns and (v.get("status") or {}).get("cacheClaim") == cache)
        return sorted(set(keys))

    def gpu_nodes(self) -> list[GpuNode]:
        return sorted(self.nodes.values(), key=lambda n: n.name)

    def put_pod(self, pod: dict[str, Any]) -> None:
        meta = pod["metadata"]
        self.pods[(meta["namespace"], meta["name"])] = pod
        owner = (meta.get("labels") or {}).get(OWNER_NAME_LABEL)
        if owner:
            self.pods_by_owner.setdefault((meta["namespace"], owner), set()).add(meta["name"])

    def drop_pod(self, namespace: str, name: str) -> None:
        pod = self.pods.pop((namespace, name), None)
        owner = ((pod or {}).get("metadata", {}).get("labels") or {}).get(OWNER_NAME_LABEL)
        if owner:
            names = self.pods_by_owner.get((namespace, owner), set())
            names.discard(name)
            if not names:
                self.pods_by_owner.pop((namespace, owner), None)

    def server_pods(self, key: Key) -> list[dict[str, Any]]:
        ns, _ = key
        return [self.pods[(ns, name)] for name in sorted(self.pods_by_owner.get(key, ()))]


class WorkQueue:
    """Deduplicating queue: a key is processed by one worker at a time; a key marked dirty while
    it is processed runs once more afterwards."""

    def __init__(self) -> None:
        self._queue: asyncio.Queue[Key] = asyncio.Queue()
        self._queued: set[Key] = set()
        self._active: set[Key] = set()
        self._dirty: set[Key] = set()
        self._timers: dict[Key, asyncio.TimerHandle] = {}

    def add(self, key: Key) -> None:
        if key in self._active:
            self._dirty.add(key)
        elif key not in self._queued:
            self._queued.add(key)
            self._queue.put_nowait(key)

    def add_after(self, key: Key, delay: float) -> None:
        old = self._timers.pop(key, None)
        if old is not None:
            old.cancel()
        self._timers[key] = asyncio.get_running_loop().call_later(delay, self._fire, key)

    def _fire(self, key: Key) -> None:
        self._timers.pop(key, None)
        self.add(key)

    async def get(self) -> Key:
        key = await self._queue.get()
        self._queued.discard(key)
        self._active.add(key)
        return key

    def done(self, key: Key) -> None:
        self._active.discard(key)
        if key in self._dirty:
            self._dirty.discard(key)
            self.add(key)

    def depth(self) -> int:
        return self._queue.qsize()

    def idle(self) -> bool:
        return not self._queued and not self._active


class Controller:
    def __init__(self, client: KubeClient, settings: Settings | None = None, hub: HubClient | None = None):
        self.client = client
        self.settings = settings or Settings()
        self.hub = hub or HubClient(self.settings.hub_endpoint)
        self.policy = AdminPolicy.from_settings(self.settings)  # once; PolicyError: refuse to start
        self.store = Store()
        self.queue = WorkQueue()
        self.failures: dict[Key, int] = {}
        self.active = asyncio.Event()  # set while this replica may act (leader election)
        self.probing = False  # set by the Prober when it runs
        self._tasks: list[asyncio.Task[None]] = []
        self._secret_cache: dict[tuple[str, str, str], tuple[float, str | None]] = {}
        self._background: set[asyncio.Task[None]] = set()

    # --- lifecycle -----------------------------------------------------------------------------

    async def prime(self, child_kinds: Iterable[str]) -> None:
        """Fill the store with one LIST per kind before the first reconcile, so that no object
        is re-applied only because its watch event had not arrived yet."""
        selector = {"labelSelector": f"{MANAGED_BY_LABEL}={MANAGED_BY}"}
        for kind in child_kinds:
            try:
                items = (await list_objects(self.client, kind, params=selector))["items"]  # served namespaces
            except ApiError as exc:
                if exc.status == 404:  # e.g. no ServiceMonitor CRD
                    continue
                raise
            for item in items:
                item.setdefault("kind", kind)
                self.store.put_child(kind, item)
        for node in (await self.client.request("GET", KINDS["Node"].path()))["items"]:
            gpu_node = gpu_node_from_body(node)
            self.store.nodes[gpu_node.name] = gpu_node
        for sc in (await self.client.request("GET", KINDS["StorageClass"].path()))["items"]:
            self.store.storage_classes[sc["metadata"]["name"]] = storage_class_summary(sc)
        for name in WATCHED_CRDS:
            try:
                crd = await self.client.request("GET", f"/apis/apiextensions.k8s.io/v1/customresourcedefinitions/{name}")
            except ApiError as exc:
                if exc.status not in (403, 404):
                    raise
                continue
            if crd_established(crd):
                self.store.established_crds.add(name)

    async def relist_vllmdeployments(self) -> None:
        """One LIST puts the store right when the watch missed an event (seen across an API
        server restart): newer objects are taken and passed, vanished ones forgotten; what the
        store holds newer than the list (a watch event that overtook it) is kept."""
        listing = await list_objects(self.client, "VLLMDeployment")  # served namespaces
        listed_at = (listing.get("metadata") or {}).get("resourceVersion", "")
        seen: set[Key] = set()
        changed: list[Key] = []
        for item in listing.get("items") or []:
            meta = item["metadata"]
            key = (meta["namespace"], meta["name"])
            seen.add(key)
            known = self.store.vllmds.get(key)
            if known is None or _newer(meta.get("resourceVersion", ""), known["metadata"].get("resourceVersion", "")):
                item.setdefault("apiVersion", "scibox.io/v1alpha1")
                item.setdefault("kind", "VLLMDeployment")
                self.store.vllmds[key] = _trim(item)
                changed.append(key)
        for key, body in list(self.store.vllmds.items()):
            if key not in seen and not _newer(body["metadata"].get("resourceVersion", ""), listed_at):
                self.store.forget_vllmd(key)
        self.enqueue(changed)

    def became_leader(self) -> None:
        """Act again, from a store checked against the API server (events may have been missed
        while the connection was down)."""
        self.active.set()
        task = asyncio.create_task(self._relist_quietly())
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _relist_quietly(self) -> None:
        try:
            await self.relist_vllmdeployments()
        except (ApiError, OSError, asyncio.TimeoutError, aiohttp.ClientError) as exc:
            log.warning("re-listing VLLMDeployments failed (the next resync retries): %s", exc)

    def start(self) -> None:
        for i in range(self.settings.workers):
            self._tasks.append(asyncio.create_task(self._worker(), name=f"scibox-worker-{i}"))
        self._tasks.append(asyncio.create_task(self._resync(), name="scibox-resync"))

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.hub.close()

    def enqueue(self, keys: Iterable[Key]) -> None:
        for key in keys:
            self.queue.add(key)

    def enqueue_all(self) -> None:
        self.enqueue(list(self.store.vllmds))

    async def _resync(self) -> None:
        while True:
            await asyncio.sleep(self.settings.resync_seconds)
            await self._relist_quietly()
            self.enqueue_all()

    async def _worker(self) -> None:
        while True:
            key = await self.queue.get()
            try:
                await self.active.wait()
                started = time.perf_counter()
                result = "ok"
                try:
                    retry_after = await self.reconcile(key)
                except (ApiError, HubError, OSError, asyncio.TimeoutError, aiohttp.ClientError) as exc:
                    result = "error"
                    retry_after = self._backoff(key, transient=_transient(exc))
                    log.warning("reconcile %s/%s failed (retry in %.0fs): %s", *key, retry_after, exc)
                except Exception:  # a bug must not stop the worker or affect other objects
                    result = "error"
                    retry_after = self._backoff(key, transient=False)
                    log.exception("reconcile %s/%s crashed (retry in %.0fs)", *key, retry_after)
                else:
                    if retry_after is None:
                        self.failures.pop(key, None)
                metrics.RECONCILES.labels(result=result).inc()
                metrics.RECONCILE_SECONDS.observe(time.perf_counter() - started)
                if retry_after is not None:
                    self.queue.add_after(key, retry_after)
            finally:
                self.queue.done(key)

    def _backoff(self, key: Key, *, transient: bool = False) -> float:
        """Exponential per object, with jitter. An API server that is restarting or overloaded
        (connection refused, 429, 5xx) is retried within TRANSIENT_MAX_BACKOFF: the backoff a
        long outage built up must not keep objects waiting minutes after the server is back."""
        n = self.failures.get(key, 0) + 1
        self.failures[key] = n
        ceiling = TRANSIENT_MAX_BACKOFF if transient else self.settings.max_backoff
        return min(ceiling, (2 ** min(n, 10)) * (0.75 + random.random() / 2))

    # --- reconcile -------------------------------------------------------------------------------

    async def reconcile(self, key: Key) -> float | None:
        """One pass for one VLLMDeployment. Returns seconds until it must run again, or None."""
        body = self.store.vllmds.get(key)
        if body is None or (body.get("metadata") or {}).get("deletionTimestamp"):
            return None  # children carry owner references: the garbage collector removes them
        now = datetime.now(timezone.utc)
        current_status = body.get("status") or {}
        try:
            vd = parse(body)
        except InvalidSpec as exc:
            await self._write_status(body, compute_status(
                _unparsed(body), current=current_status, now=now, failure=Failure("InvalidSpec", exc.message)))
            return None
        # Before any Secret is read, hub request made or child rendered (issue 18).
        violation = policy_violation(vd, self.policy)
        if violation is not None:
            await self._write_status(body, compute_status(vd, current=current_status, now=now,
                                                          failure=Failure(*violation)))
            return None

        retry: float | None = None
        config = index = None
        # Hub models: the config is read even when every size is explicit, so that sizes vLLM
        # would refuse (TP not dividing the heads) fail here, not in a crash-looping pod. When
        # the hub is unreachable, explicit sizes still deploy (see decide_serving_plan).
        needs_metadata = not vd.spec.model.is_pvc
        hub_error: HubError | None = None
        if needs_metadata:
            try:
                token = await self._secret_value(vd.namespace, vd.spec.cache.token_secret_ref)
                meta = await self.hub.metadata(vd.spec.model.name, vd.spec.model.revision,
                                               endpoint=vd.spec.cache.endpoint, token=token)
                config, index = meta.config, meta.safetensors_index
            except HubError as exc:
                hub_error = exc.fresh()  # not exc: its traceback holds this frame (a cycle)
        try:
            plan = decide_serving_plan(vd, config=config, safetensors_index=index, nodes=self.store.gpu_nodes(),
                                       cache_shared=self._cache_shared(vd), image=self.settings.vllm_image)
        except PlanFailure as exc:
            failure = Failure(exc.reason, exc.message)
            if hub_error is not None and exc.reason == "ModelConfigUnavailable":
                failure = Failure(hub_error.reason, hub_error.message)
                retry = None if hub_error.permanent else self._backoff(key)
            elif exc.retry:
                retry = self._backoff(key)
            await self._write_status(body, compute_status(vd, current=current_status, now=now, failure=failure))
            return retry

        # The GPU workload waits until the weights are on the volume; every other child is
        # independent, so they are written concurrently (one round trip, not six).
        # A shared claim's Job (and a Delete-policy claim) is owned by every user of the model, so
        # rendering it costs O(users): done only while the download is unfinished, and not at all
        # in the passes after it (with 1000 users that was half the operator's CPU).
        cache_state = CacheState(True, reason="ModelOnVolume", message=f"model read from claim {plan.cache_claim}")
        download_pending = False
        if not vd.spec.model.is_pvc:
            job_name = download_job_name(plan)
            cache_state = CacheState.from_job(self.store.child("Job", vd.namespace, job_name),
                                              self.store.downloads.get((vd.namespace, job_name)))
            download_pending = not cache_state.complete
        owners = (self._cache_users(vd, plan)
                  if download_pending or vd.spec.cache.deletion_policy == "Delete" else [vd])
        job = render_download_job(vd, plan, owners) if download_pending else None
        if plan.multi_node and not self.store.leader_worker_set_crd:
            failure = Failure("LeaderWorkerSetMissing",
                              f"the plan needs {plan.nodes} nodes per replica ({plan.parallelism_reason}); {INSTALL_HINT}")
            await self._write_status(body, compute_status(vd, current=current_status, now=now, plan=plan,
                                                          failure=failure))
            return None
        monitor = (render_service_monitor(vd)
                   if self.store.service_monitor_crd and vd.spec.monitoring.service_monitor else None)
        results = await asyncio.gather(
            self._ensure_or_remove("PersistentVolumeClaim", vd.namespace, plan.cache_claim,
                                   render_cache_pvc(vd, plan, owners), remove=False),
            self._ensure_download(vd, job, cache_state),
            self._ensure_workload(vd, plan, cache_state.complete),
            self._ensure(render_service(vd, multi_node=plan.multi_node)),
            self._ensure_or_remove("NetworkPolicy", vd.namespace, vd.name, render_network_policy(vd)),
            self._ensure_or_remove("ServiceMonitor", vd.namespace, vd.name, monitor),
            return_exceptions=True,
        )
        for result in results:
            if isinstance(result, ChildRejected):
                await self._write_status(body, compute_status(vd, current=current_status, now=now, plan=plan,
                                                              failure=Failure("InvalidSpec", str(result))))
                return None
        error = next((result for result in results if isinstance(result, BaseException)), None)
        live_workload = results[2]
        del results
        if error is not None:
            try:
                raise error
            finally:
                error = None  # the traceback holds this frame; the frame must not hold it back

        readiness = self.store.readiness.get(key) if self.probing else None
        status = compute_status(vd, current=current_status, now=now, plan=plan, cache=cache_state,
                                deployment=live_workload, readiness=readiness, endpoint=endpoint_url(vd),
                                probing=self.probing)
        await self._write_status(body, status)
        return retry

    async def _ensure_workload(self, vd: VLLMDeployment, plan: ServingPlan,
                               cache_complete: bool) -> dict[str, Any] | None:
        """The Deployment, or the LeaderWorkerSet when one replica spans nodes; the other kind
        is removed when the plan switches. Nothing is rolled until the model is cached."""
        lws_name = leader_worker_set_name(vd)
        kind, name, other, other_name = (("LeaderWorkerSet", lws_name, "Deployment", vd.name) if plan.multi_node
                                         else ("Deployment", vd.name, "LeaderWorkerSet", lws_name))
        live = self.store.child(kind, vd.namespace, name)
        if cache_complete:
            desired = render_leader_worker_set(vd, plan) if plan.multi_node else render_deployment(vd, plan)
            live = await self._ensure(desired) or live
            if plan.multi_node:
                # kopf starts the LeaderWorkerSet watch only when it sees the CRD in discovery,
                # and can miss a CRD installed after the operator started; the group's status
                # is read from the API (multi-node objects are few; their pods' events bring
                # these passes).
                live = await self._read_fresh(kind, vd.namespace, name) or live
            if self.store.child(other, vd.namespace, other_name) is not None:
                await self.client.delete(other, vd.namespace, other_name)
        return live

    async def _read_fresh(self, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        try:
            body = await self.client.request("GET", KINDS[kind].path(namespace, name))
        except ApiError as exc:
            if exc.status == 404:
                return None
            raise
        body.setdefault("kind", kind)
        self.store.put_child(kind, body)
        return self.store.child(kind, namespace, name)

    async def _ensure_download(self, vd: VLLMDeployment, job: dict[str, Any] | None, cache: CacheState) -> None:
        if job is None or cache.complete:
            return
        live = self.store.child("Job", vd.namespace, job["metadata"]["name"])
        if cache.failed:
            if needs_apply(job, live):
                # A failed download retries only when its inputs changed (token, mirror, ...):
                # the old Job goes, and its deletion event brings the next pass that recreates it.
                await self.client.delete("Job", vd.namespace, job["metadata"]["name"], uid=live["metadata"].get("uid"))
            return
        await self._ensure(job, replace_on_conflict=True)

    async def _ensure_or_remove(self, kind: str, namespace: str, name: str, desired: dict[str, Any] | None,
                                *, remove: bool = True) -> None:
        """Apply an optional child, or delete it when the spec no longer asks for it."""
        if desired is not None:
            await self._ensure(desired)
        elif remove and self.store.child(kind, namespace, name) is not None:
            await self.client.delete(kind, namespace, name)

    # --- helpers ---------------------------------------------------------------------------------

    def _cache_shared(self, vd: VLLMDeployment) -> bool:
        mode = vd.spec.cache.access_mode
        if mode != "Auto":
            return mode == "ReadWriteMany"
        sc_name = vd.spec.cache.storage_class_name or self._default_storage_class()
        sc = self.store.storage_classes.get(sc_name or "")
        modes = ((sc or {}).get("metadata", {}).get("annotations") or {}).get(RWX_ANNOTATION, "")
        return "ReadWriteMany" in modes

    def _default_storage_class(self) -> str | None:
        for name, sc in sorted(self.store.storage_classes.items()):
            ann = (sc.get("metadata") or {}).get("annotations") or {}
            if ann.get("storageclass.kubernetes.io/is-default-class") == "true":
                return name
        return None

    def _cache_users(self, vd: VLLMDeployment, plan: ServingPlan) -> list[VLLMDeployment]:
        if not plan.cache_shared:
            return [vd]
        users = [vd]
        for (ns, name), body in list(self.store.vllmds.items()):
            if ns != vd.namespace or name == vd.name or (body.get("metadata") or {}).get("deletionTimestamp"):
                continue
            other = self.store.parsed((ns, name))
            if other is None:
                continue
            if (other.spec.model.name, other.spec.model.revision) == (vd.spec.model.name, vd.spec.model.revision) \
                    and (other.spec.cache.access_mode in ("Auto", "ReadWriteMany")) \
                    and other.spec.cache.deletion_policy == vd.spec.cache.deletion_policy \
                    and not other.spec.cache.existing_claim:
                users.append(other)
        return users

    async def _ensure(self, desired: dict[str, Any], *, replace_on_conflict: bool = False) -> dict[str, Any] | None:
        kind = desired["kind"]
        meta = desired["metadata"]
        live = self.store.child(kind, meta["namespace"], meta["name"])
        if not needs_apply(desired, live):
            return None
        try:
            result = await self.client.apply(desired)
        except ApiError as exc:
            # Job templates are immutable: a changed download Job is replaced, not patched.
            if replace_on_conflict and exc.status == 422 and live is not None:
                await self.client.delete(kind, meta["namespace"], meta["name"], uid=live["metadata"].get("uid"))
                self.store.drop_child(kind, meta["namespace"], meta["name"])
                return None
            # Server-side apply answers a field unknown to the child's schema with a 500 that
            # says so; like a 400 or 422, no retry can fix what the spec asked for.
            if exc.status in (400, 422) or (exc.status == 500 and "failed to create typed patch object" in exc.message):
                raise ChildRejected(kind, meta["name"], exc.message) from None
            raise
        metrics.APPLIES.labels(kind=kind).inc()
        self.store.put_child(kind, result)
        return result

    async def _write_status(self, body: dict[str, Any], status: dict[str, Any]) -> None:
        meta = body["metadata"]
        current = body.get("status") or {}
        if not status_differs(current, status):
            return
        patch = dict(status)
        for stale in set(current) - set(status):
            patch[stale] = None  # merge-patch null removes what no longer applies
        if current.get("phase") != status.get("phase"):
            metrics.PHASE_TRANSITIONS.labels(phase=str(status.get("phase"))).inc()
            # An event is a courtesy to the user: posted in the background, never on the
            # reconcile's critical path.
            task = asyncio.create_task(self._event(body, status))
            self._background.add(task)
            task.add_done_callback(self._background.discard)
        result = await self.client.patch_status("VLLMDeployment", meta["namespace"], meta["name"], patch)
        key = (meta["namespace"], meta["name"])
        if key in self.store.vllmds and result:
            self.store.vllmds[key] = _trim(result)

    async def _event(self, body: dict[str, Any], status: dict[str, Any]) -> None:
        ready = next((c for c in status.get("conditions", []) if c["type"] == "Ready"), None)
        failed = status.get("phase") == "Failed"
        reason = ready["reason"] if ready else str(status.get("phase"))
        message = f"phase {status.get('phase')}: {ready['message'] if ready else ''}".strip()
        try:
            await self.client.create_event(body, type_="Warning" if failed else "Normal", reason=reason, message=message)
        except (ApiError, OSError, asyncio.TimeoutError) as exc:
            log.info("event for %s not posted: %s", body["metadata"]["name"], exc)

    async def _secret_value(self, namespace: str, ref: Any) -> str | None:
        if ref is None:
            return None
        key = (namespace, ref.name, ref.key)
        hit = self._secret_cache.get(key)
        if hit and time.monotonic() - hit[0] < self.settings.secret_ttl:
            return hit[1]
        secret = await self.client.get("Secret", namespace, ref.name)
        value = None
        if secret is not None:
            import base64
            raw = (secret.get("data") or {}).get(ref.key)
            value = base64.b64decode(raw).decode() if raw else None
        self._secret_cache[key] = (time.monotonic(), value)
        return value


def _unparsed(body: dict[str, Any]) -> VLLMDeployment:
    """Identity of an object whose spec did not parse, so its status can still be written."""
    from .spec import ModelSource, VLLMDeploymentSpec

    meta = body.get("metadata") or {}
    return VLLMDeployment(meta.get("name", ""), meta.get("namespace", ""), meta.get("uid", ""),
                          int(meta.get("generation") or 0),
                          VLLMDeploymentSpec.model_construct(model=ModelSource.model_construct(name="?")))
