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
from .diff import needs_apply, owned_by
from .hub import HubClient, HubError
from .kube import KINDS, ApiError, KubeClient, list_objects
from .policy import AdminPolicy, policy_violation
from .probe import ReadinessSummary
from .status import download_report
from .reconcile.desired import Desired, Observed, child_keys, desired
from .reconcile.last_plan import last_known_plan, plan_inputs
from .render.cache import download_job_name
from .render.common import CACHE_LABEL, DOWNLOAD, MANAGED_BY, MANAGED_BY_LABEL, OWNER_NAME_LABEL, SERVER
from .render.service import endpoint_url
from .serving import (DEFAULT_VLLM_IMAGE, GpuNode, PlanFailure, ServingPlan, cache_claim_name, decide_serving_plan,
                      gpu_node_from_body)
from .spec import InvalidSpec, VLLMDeployment, parse, short_hash
from .status import CacheState, Failure, PlanNote, compute_status, status_differs

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
    return {"metadata": {"name": meta.get("name"), "annotations": dict(meta.get("annotations") or {})},
            "allowVolumeExpansion": bool(body.get("allowVolumeExpansion"))}


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


class ChildConflict(Exception):
    """A child's name is taken by an object this VLLMDeployment does not own."""

    def __init__(self, kind: str, name: str):
        super().__init__(f"{kind} {name} exists and is not owned by this VLLMDeployment")
        self.key = (kind, name)


def conflict_failure(conflicts: Iterable[tuple[str, str]]) -> Failure:
    names = ", ".join(f"{kind} {name}" for kind, name in conflicts)
    return Failure("ChildConflict", f"{names} already exist(s) and are not owned by this VLLMDeployment (no "
                                    "controller reference to it): the operator leaves them untouched; rename "
                                    "this VLLMDeployment or remove them")


@dataclass(frozen=True)
class Applied:
    workload: dict[str, Any] | None
    conflicts: tuple[tuple[str, str], ...] = ()
    rejected: ChildRejected | None = None


@dataclass(frozen=True)
class PlanOutcomeFailure:
    failure: Failure
    retry: float | None


# The kinds the operator renders, and therefore watches and re-lists (only objects it labelled).
CHILD_KINDS = ("Deployment", "Service", "Job", "PersistentVolumeClaim", "ServiceMonitor", "LeaderWorkerSet",
               "NetworkPolicy")
# Kinds whose pods mount the cache claim.
MOUNTING_KINDS = ("Job", "Deployment", "LeaderWorkerSet")
OURS_SELECTOR = f"{MANAGED_BY_LABEL}={MANAGED_BY}"
SERVER_POD_SELECTOR = f"{OURS_SELECTOR},app.kubernetes.io/component={SERVER}"
DOWNLOAD_POD_SELECTOR = f"{OURS_SELECTOR},app.kubernetes.io/component={DOWNLOAD}"


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
        cache = (meta.get("labels") or {}).get(CACHE_LABEL)
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

    async def prime(self) -> None:
        """Fill the store with one LIST per kind before the first reconcile, so that no object
        is re-applied only because its watch event had not arrived yet."""
        for kind in CHILD_KINDS:
            listing = await self._list_quietly(kind, OURS_SELECTOR)
            for item in (listing or {}).get("items") or []:
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

    async def relist_children(self) -> None:
        """kopf re-lists after a watch gap but emits no DELETED for what went meanwhile: one LIST
        per kind puts the store right (a child deleted in the gap is recreated, a pod gone in the
        gap is no longer probed), and the owners of whatever changed get a pass."""
        changed: list[dict[str, Any]] = []
        for kind in CHILD_KINDS:
            listing = await self._list_quietly(kind, OURS_SELECTOR)
            if listing is None:
                continue
            changed += _reconcile_listing(listing, self.store.children.setdefault(kind, {}),
                                          lambda item, kind=kind: self.store.put_child(kind, item),
                                          lambda ns, name, kind=kind: self.store.drop_child(kind, ns, name))
        for selector in (SERVER_POD_SELECTOR, DOWNLOAD_POD_SELECTOR):
            listing = await self._list_quietly("Pod", selector)
            if listing is None:
                continue
            component = selector.rsplit("=", 1)[1]
            pods = {k: p for k, p in self.store.pods.items()
                    if (p["metadata"].get("labels") or {}).get("app.kubernetes.io/component") == component}
            changed += _reconcile_listing(listing, pods, self.observe_pod, self.store.drop_pod)
        keys: set[Key] = set()
        for body in changed:
            keys.update(self.store.owners_of(body))
        self.enqueue(sorted(keys))

    async def _list_quietly(self, kind: str, selector: str) -> dict[str, Any] | None:
        try:
            return await list_objects(self.client, kind, params={"labelSelector": selector})  # served namespaces
        except ApiError as exc:
            if exc.status == 404:  # e.g. no ServiceMonitor CRD
                return None
            raise

    def observe_pod(self, body: Any) -> bool:
        """A server or download pod into the store; True when a download report changed (the
        download script leaves bytes, duration or its error in the termination message)."""
        self.store.put_pod(pod_summary(body))
        labels = (body.get("metadata") or {}).get("labels") or {}
        job = labels.get("batch.kubernetes.io/job-name") or labels.get("job-name")
        if labels.get("app.kubernetes.io/component") != DOWNLOAD or not job:
            return False
        report = download_report(body)
        key = (body["metadata"]["namespace"], job)
        if report is None or self.store.downloads.get(key) == report:
            return False
        self.store.downloads[key] = report
        return True

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
            await self.relist_children()
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
        """One pass for one VLLMDeployment: observe -> plan -> desired -> apply the differences
        -> status. Returns seconds until it must run again, or None."""
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

        planned = await self._plan(key, vd, current_status)
        if isinstance(planned, PlanOutcomeFailure):
            await self._write_status(body, compute_status(vd, current=current_status, now=now,
                                                          failure=planned.failure))
            return planned.retry
        plan, plan_note = planned
        inputs = plan_inputs(vd)
        observed = self._observe(vd, plan, api_key_digest=await self._api_key_digest(vd))
        want = desired(vd, plan, observed)
        status_args: dict[str, Any] = dict(current=current_status, now=now, plan=plan, plan_inputs=inputs,
                                           plan_note=plan_note)
        if want.failure is not None:
            await self._write_status(body, compute_status(vd, failure=want.failure, **status_args))
            return None
        applied = await self._apply(vd, want)
        if applied.rejected is not None:
            await self._write_status(body, compute_status(vd, failure=Failure("InvalidSpec", str(applied.rejected)),
                                                          **status_args))
            return None
        if applied.conflicts:
            # Not ours: never written, never deleted. Retried with back-off, since the user's object
            # may go away without an event the operator would see (it is not labelled).
            await self._write_status(body, compute_status(vd, failure=conflict_failure(applied.conflicts),
                                                          **status_args))
            return self._backoff(key)

        readiness = self.store.readiness.get(key) if self.probing else None
        status = compute_status(vd, cache=observed.cache, deployment=applied.workload, readiness=readiness,
                                endpoint=endpoint_url(vd), probing=self.probing,
                                workload_current=want.workload_current,
                                notes=tuple((n.type, n.status, n.reason, n.message) for n in want.notes),
                                **status_args)
        await self._write_status(body, status)
        return None

    async def _plan(self, key: Key, vd: VLLMDeployment,
                    current_status: dict[str, Any]) -> "tuple[ServingPlan, PlanNote | None] | PlanOutcomeFailure":
        """The serving plan from the hub's metadata, or the last plan in status while the hub
        cannot be read (an outage must not turn a serving model Failed)."""
        config = index = None
        # Hub models: the config is read even when every size is explicit, so that sizes vLLM
        # would refuse (TP not dividing the heads) fail here, not in a crash-looping pod.
        hub_error: HubError | None = None
        if not vd.spec.model.is_pvc:
            try:
                token = await self._secret_value(vd.namespace, vd.spec.cache.token_secret_ref)
                meta = await self.hub.metadata(vd.spec.model.name, vd.spec.model.revision,
                                               endpoint=vd.spec.cache.endpoint, token=token)
                config, index = meta.config, meta.safetensors_index
            except HubError as exc:
                hub_error = exc.fresh()  # not exc: its traceback holds this frame (a cycle)
        shared = self._cache_shared(vd)
        if hub_error is not None and not hub_error.permanent:
            kept = last_known_plan(vd, current_status, cache_shared=shared, image=self.settings.vllm_image)
            if kept is not None:
                return kept, PlanNote("LastKnownPlan", f"the model's metadata cannot be read ({hub_error.message}); "
                                                       f"serving with the last plan: {kept.parallelism_reason}")
        try:
            plan = decide_serving_plan(vd, config=config, safetensors_index=index, nodes=self.store.gpu_nodes(),
                                       cache_shared=shared, image=self.settings.vllm_image)
        except PlanFailure as exc:
            if hub_error is not None and exc.reason == "ModelConfigUnavailable":
                retry = None if hub_error.permanent else self._backoff(key)
                return PlanOutcomeFailure(Failure(hub_error.reason, hub_error.message), retry)
            return PlanOutcomeFailure(Failure(exc.reason, exc.message), self._backoff(key) if exc.retry else None)
        return plan, None

    async def _api_key_digest(self, vd: VLLMDeployment) -> str | None:
        """A salted digest of the API key (never the key): its change rolls the server pods."""
        key = await self._secret_value(vd.namespace, vd.spec.auth.api_key_secret_ref)
        return None if key is None else short_hash(vd.uid, key, length=16)

    def _observe(self, vd: VLLMDeployment, plan: ServingPlan, *, api_key_digest: str | None = None) -> Observed:
        """A snapshot of what the store holds for this VLLMDeployment (no I/O)."""
        ns = vd.namespace
        children = {(kind, name): live for kind, name in child_keys(vd, plan)
                    if (live := self.store.child(kind, ns, name)) is not None}
        if vd.spec.model.is_pvc:
            cache = CacheState(True, reason="ModelOnVolume", message=f"model read from claim {plan.cache_claim}")
        else:
            job_name = download_job_name(plan)
            cache = CacheState.from_job(children.get(("Job", job_name)), self.store.downloads.get((ns, job_name)))
        # A shared claim's Job (and a Delete-policy claim) is owned by every user of the model, so
        # gathering them costs O(users): done only while the download is unfinished or when the
        # claim may be deleted with its users (with 1000 users that was half the operator's CPU).
        gather = (not cache.complete and not vd.spec.model.is_pvc) or vd.spec.cache.deletion_policy == "Delete"
        users = tuple(self._cache_users(vd, plan)) if gather else (vd,)
        expandable = {name: bool(sc.get("allowVolumeExpansion")) for name, sc in self.store.storage_classes.items()}
        return Observed(children=children, users=users, cache=cache,
                        service_monitor_crd=self.store.service_monitor_crd,
                        leader_worker_set_crd=self.store.leader_worker_set_crd,
                        expandable_storage=expandable, default_image=self.settings.vllm_image,
                        hub_endpoint=self.settings.hub_endpoint, api_key_digest=api_key_digest)

    async def _apply(self, vd: VLLMDeployment, want: Desired) -> Applied:
        """Write the children that differ, remove the ones no longer wanted, concurrently (one
        round trip, not six). Nothing without this VLLMDeployment's ownership is touched."""
        children = list(want.children)
        results: list[Any] = []
        claim = next((c for c in children if c["kind"] == "PersistentVolumeClaim"), None)
        if claim is not None:
            # First, alone: a claim that is not ours must never be mounted (the download Job
            # would write into someone else's volume).
            children.remove(claim)
            results += await asyncio.gather(self._ensure_child(vd, claim), return_exceptions=True)
            if isinstance(results[0], ChildConflict):
                children = [c for c in children if c["kind"] not in MOUNTING_KINDS]
        results += await asyncio.gather(
            *(self._ensure_child(vd, child) for child in children),
            *(self._remove_child(vd, kind, name) for kind, name in want.removals),
            return_exceptions=True,
        )
        rejected = next((r for r in results if isinstance(r, ChildRejected)), None)
        conflicts = sorted({r.key for r in results if isinstance(r, ChildConflict)})
        error = next((r for r in results if isinstance(r, BaseException)
                      and not isinstance(r, (ChildRejected, ChildConflict))), None)
        del results
        if error is not None:
            try:
                raise error
            finally:
                error = None  # the traceback holds this frame; the frame must not hold it back
        kind, name = want.workload
        workload = self.store.child(kind, vd.namespace, name)
        if kind == "LeaderWorkerSet" and want.workload_current:
            # kopf starts the LeaderWorkerSet watch only when it sees the CRD in discovery,
            # and can miss a CRD installed after the operator started; the group's status
            # is read from the API (multi-node objects are few; their pods' events bring
            # these passes).
            workload = await self._read_fresh(kind, vd.namespace, name) or workload
        return Applied(workload=workload, conflicts=tuple(conflicts), rejected=rejected)

    async def _ensure_child(self, vd: VLLMDeployment, child: dict[str, Any]) -> None:
        kind = child["kind"]
        name = child["metadata"]["name"]
        live = self.store.child(kind, vd.namespace, name)
        if live is None:
            # The store holds only labelled objects: one named like this child that someone
            # else made is found only by asking.
            live = await self.client.get(kind, vd.namespace, name)
            if live is not None:
                if not owned_by(kind, live, vd.uid):
                    raise ChildConflict(kind, name)
                live.setdefault("kind", kind)
                self.store.put_child(kind, live)
                live = self.store.child(kind, vd.namespace, name)
        elif not owned_by(kind, live, vd.uid):
            raise ChildConflict(kind, name)
        if not needs_apply(child, live):
            return
        try:
            result = await self.client.apply(child)
        except ApiError as exc:
            # Job templates are immutable: a changed download Job is replaced, not patched.
            if kind == "Job" and exc.status == 422 and live is not None:
                await self.client.delete(kind, vd.namespace, name, uid=live["metadata"].get("uid"))
                self.store.drop_child(kind, vd.namespace, name)
                return
            # Server-side apply answers a field unknown to the child's schema with a 500 that
            # says so; like a 400 or 422, no retry can fix what the spec asked for.
            if exc.status in (400, 422) or (exc.status == 500 and "failed to create typed patch object" in exc.message):
                raise ChildRejected(kind, name, exc.message) from None
            raise
        metrics.APPLIES.labels(kind=kind).inc()
        self.store.put_child(kind, result)

    async def _remove_child(self, vd: VLLMDeployment, kind: str, name: str) -> None:
        live = self.store.child(kind, vd.namespace, name)
        if live is None or not owned_by(kind, live, vd.uid):
            return  # what is not ours stays, even when it carries our labels
        await self.client.delete(kind, vd.namespace, name, uid=(live.get("metadata") or {}).get("uid"))

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
        """Every live VLLMDeployment of the namespace serving from this plan's cache claim."""
        if not plan.cache_shared:
            return [vd]
        users = [vd]
        for (ns, name), body in list(self.store.vllmds.items()):
            if ns != vd.namespace or name == vd.name or (body.get("metadata") or {}).get("deletionTimestamp"):
                continue
            other = self.store.parsed((ns, name))
            if other is None or other.spec.model.is_pvc or other.spec.cache.existing_claim:
                continue
            if (other.spec.model.name, other.spec.model.revision) == (vd.spec.model.name, vd.spec.model.revision) \
                    and cache_claim_name(other, self._cache_shared(other)) == plan.cache_claim:
                users.append(other)
        return users

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


def pod_summary(body: Any) -> dict[str, Any]:
    """Only what the prober and the metrics need: address, readiness, container states."""
    meta = body.get("metadata") or {}
    status = body.get("status") or {}
    return {
        "metadata": {"name": meta.get("name"), "namespace": meta.get("namespace"), "uid": meta.get("uid"),
                     "resourceVersion": meta.get("resourceVersion"), "labels": dict(meta.get("labels") or {}),
                     # what says whether the operator's own workload made the pod (ownership.pod_is_ours)
                     "ownerReferences": [dict(r) for r in meta.get("ownerReferences") or []]},
        "spec": {"hostNetwork": bool((body.get("spec") or {}).get("hostNetwork"))},
        "status": {"phase": status.get("phase"), "podIP": status.get("podIP"), "hostIP": status.get("hostIP"),
                   "conditions": list(status.get("conditions") or []),
                   "containerStatuses": list(status.get("containerStatuses") or [])},
    }


def _reconcile_listing(listing: dict[str, Any], known: dict[Key, dict[str, Any]], put: Any, drop: Any) -> list[Any]:
    """Bring `known` (the store's objects of one list) in line with a fresh LIST: what the list
    has newer is put, what it lacks is dropped unless the store's copy is newer than the list.
    Returns the objects that changed."""
    listed_at = (listing.get("metadata") or {}).get("resourceVersion", "")
    seen: set[Key] = set()
    changed: list[Any] = []
    for item in listing.get("items") or []:
        meta = item["metadata"]
        key = (meta["namespace"], meta["name"])
        seen.add(key)
        have = known.get(key)
        if have is None or _newer(meta.get("resourceVersion", ""), (have.get("metadata") or {}).get("resourceVersion") or ""):
            put(item)
            changed.append(item)
    for key, body in list(known.items()):
        if key not in seen and not _newer((body.get("metadata") or {}).get("resourceVersion") or "", listed_at):
            drop(*key)
            changed.append(body)
    return changed


def _unparsed(body: dict[str, Any]) -> VLLMDeployment:
    """Identity of an object whose spec did not parse, so its status can still be written."""
    from .spec import ModelSource, VLLMDeploymentSpec

    meta = body.get("metadata") or {}
    return VLLMDeployment(meta.get("name", ""), meta.get("namespace", ""), meta.get("uid", ""),
                          int(meta.get("generation") or 0),
                          VLLMDeploymentSpec.model_construct(model=ModelSource.model_construct(name="?")))
