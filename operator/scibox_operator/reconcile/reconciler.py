"""The reconcile loop: one pass per VLLMDeployment, in one direction.

kopf delivers watch events (handlers.py); they land in the store and mark the owning
VLLMDeployment dirty. Workers take dirty keys from the queue and run `reconcile`: observe (a
snapshot of the store) -> plan -> desired() (pure) -> apply the differences -> write status if
it changed. Steady state therefore costs no API request at all: every comparison is against the
watch cache.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Iterable
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

import aiohttp

from scibox_operator import metrics
from scibox_operator.api.spec import InvalidSpec, VLLMDeployment, parse, short_hash
from scibox_operator.config import Settings
from scibox_operator.planning.serving_plan import PlanFailure, ServingPlan, decide_serving_plan, plan_no_longer_fits
from scibox_operator.reconcile.adapters import adapter_download_states, adapter_status
from scibox_operator.reconcile.apply import Applier, conflict_failure
from scibox_operator.reconcile.autoscale import AutoscalingPrometheus
from scibox_operator.reconcile.desired import desired
from scibox_operator.reconcile.last_plan import last_known_plan, plan_inputs
from scibox_operator.reconcile.observe import cache_shared, observe
from scibox_operator.reconcile.policy import AdminPolicy, policy_violation
from scibox_operator.reconcile.rollout import EVENT_TYPES, PROGRESSING
from scibox_operator.reconcile.rollout_slots import OperatorRolloutSlots, rollout_inputs
from scibox_operator.reconcile.startup import StartupInputs, new_stage_values, startup_status
from scibox_operator.reconcile.status import Failure, PlanNote, compute_status, group_at_rest, status_differs
from scibox_operator.render.cache import download_job_name
from scibox_operator.render.service import endpoint_url
from scibox_operator.runtime.hub import HubClient, HubError
from scibox_operator.runtime.kube import ApiError, KubeClient
from scibox_operator.runtime.optional_watch import OptionalWatches, kinds_served_by
from scibox_operator.runtime.secrets import SecretReader
from scibox_operator.runtime.store import Key, Store, trim
from scibox_operator.runtime.sync import StoreSync
from scibox_operator.runtime.workqueue import WorkQueue

log = logging.getLogger(__name__)

TRANSIENT_MAX_BACKOFF = 15.0
# A LeaderWorkerSet still moving is read again after 2, 4, 8, ... seconds, at most this far apart.
GROUP_POLL_MAX_SECONDS = 30.0


def _transient(exc: BaseException) -> bool:
    if isinstance(exc, ApiError):
        return exc.status in (0, 408, 429) or exc.status >= 500
    if isinstance(exc, HubError):
        return not exc.permanent
    return True  # connection refused/reset, timeouts


@dataclass(frozen=True)
class PlanOutcomeFailure:
    failure: Failure
    retry: float | None


class Controller:
    def __init__(self, client: KubeClient, settings: Settings | None = None, hub: HubClient | None = None):
        self.client = client
        self.settings = settings or Settings()
        self.hub = hub or HubClient(self.settings.hub_endpoint)
        self.policy = AdminPolicy.from_settings(self.settings)  # once; PolicyError: refuse to start
        self.store = Store()
        self.queue = WorkQueue()
        self.failures: dict[Key, int] = {}
        self.group_polls: dict[Key, int] = {}
        self.active = asyncio.Event()  # set while this replica may act (leader election)
        self.probing = False  # set by the Prober when it runs
        self._tasks: list[asyncio.Task[None]] = []
        self.secrets = SecretReader(client, self.settings.secret_ttl)
        self.sync = StoreSync(client, self.store)
        self.applier = Applier(client, self.store)
        self.optional_watches = OptionalWatches(client, self.store, self.child_event)
        self._background: set[asyncio.Task[None]] = set()
        self.rollout_slots = OperatorRolloutSlots(limit=self.settings.max_operator_rollouts)
        self.autoscaling_prometheus = AutoscalingPrometheus(self.settings.autoscaling_prometheus_url,
                                                            self.settings.autoscaling_polling_seconds,
                                                            self.settings.autoscaling_allow_query)

    # --- lifecycle -----------------------------------------------------------------------------

    def became_leader(self) -> None:
        """Act again, from a store checked against the API server (events may have been missed
        while the connection was down)."""
        self.active.set()
        task = asyncio.create_task(self._relist_quietly())
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _relist_quietly(self) -> None:
        try:
            self.enqueue(await self.sync.relist_vllmdeployments())
            self.enqueue(await self.sync.relist_children())
        except (TimeoutError, ApiError, OSError, aiohttp.ClientError) as exc:
            log.warning("re-listing VLLMDeployments failed (the next resync retries): %s", exc)

    def start(self) -> None:
        self.optional_watches.follow(self.store.established_crds)
        for i in range(self.settings.workers):
            self._tasks.append(asyncio.create_task(self._worker(), name=f"scibox-worker-{i}"))
        self._tasks.append(asyncio.create_task(self._resync(), name="scibox-resync"))

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.optional_watches.stop()
        await self.hub.close()

    def enqueue(self, keys: Iterable[Key]) -> None:
        for key in keys:
            self.queue.add(key)

    def enqueue_all(self) -> None:
        self.enqueue(list(self.store.vllmds))

    def child_event(self, kind: str, event_type: str, body: Any) -> None:
        """A child's watch event (or what a re-list found) into the store; its owners run again."""
        meta = body["metadata"]
        if event_type == "DELETED":
            self.store.drop_child(kind, meta["namespace"], meta["name"])
        else:
            known = self.store.child(kind, meta["namespace"], meta["name"])
            if known is not None and known["metadata"].get("resourceVersion") == meta.get("resourceVersion"):
                return  # the result of our own apply, already stored
            self.store.put_child(kind, body)
        self.enqueue(self.store.owners_of(body))

    def crds_changed(self, name: str, established: bool) -> None:
        """An optional CRD came or went: its watch follows, and every object renders again."""
        crds = self.store.established_crds
        if established == (name in crds):
            return
        (crds.add if established else crds.discard)(name)
        self.optional_watches.follow(crds)
        if not established:  # its objects go with it, and their watch has stopped
            for kind in kinds_served_by(name):
                self.store.children.pop(kind, None)
        self.enqueue_all()

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
                except (TimeoutError, ApiError, HubError, OSError, aiohttp.ClientError) as exc:
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
            self.enqueue(self.rollout_slots.release(key))
            self.group_polls.pop(key, None)
            return None  # children carry owner references: the garbage collector removes them
        now = datetime.now(UTC)
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

        plan_started = time.perf_counter()
        planned = await self._plan(key, vd, current_status)
        planning_seconds = time.perf_counter() - plan_started
        if isinstance(planned, PlanOutcomeFailure):
            await self._write_status(body, compute_status(vd, current=current_status, now=now,
                                                          failure=planned.failure))
            return planned.retry
        plan, plan_note = planned
        inputs = plan_inputs(vd)
        digest = await self._api_key_digest(vd)
        observed = observe(self.store, vd, plan, default_image=self.settings.vllm_image,
                           hub_endpoint=self.settings.hub_endpoint, api_key_digest=digest,
                           autoscaling_prometheus=self.autoscaling_prometheus)
        observed = replace(observed, rollout=rollout_inputs(self.store, vd, plan, slots=self.rollout_slots,
                                                            current_status=current_status, now=now,
                                                            api_key_digest=digest))
        want = desired(vd, plan, observed)
        # No await since the slots were read: two passes cannot both take the last one.
        self.enqueue(self.rollout_slots.update(key, want.rollout))
        if want.rollout is not None:
            await self._rollout_event(body, current_status, want.rollout.condition)
        status_args: dict[str, Any] = dict(current=current_status, now=now, plan=plan, plan_inputs=inputs,
                                           plan_note=plan_note)
        if want.failure is not None:
            await self._write_status(body, compute_status(vd, failure=want.failure, **status_args))
            return None
        applied = await self.applier.apply(vd, want)
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
        adapters, adapter_cond = adapter_status(
            vd, adapter_download_states(vd, observed.adapter_jobs, observed.adapter_reports),
            self.store.adapters.get(key, ()))
        adapter_notes = (adapter_cond,) if adapter_cond is not None else ()
        status = compute_status(vd, cache=observed.cache, deployment=applied.workload, readiness=readiness,
                                endpoint=endpoint_url(vd), probing=self.probing,
                                workload_current=want.workload_current,
                                notes=tuple((n.type, n.status, n.reason, n.message) for n in want.notes)
                                + adapter_notes,
                                rollout=want.rollout.status if want.rollout is not None else None,
                                **status_args)
        if adapters:
            status["adapters"] = adapters
        status["startup"] = startup_status(vd.generation, current_status.get("startup"), now=now,
                                           inputs=self._startup_inputs(key, vd, plan, planning_seconds),
                                           ready=_condition(status, "Ready") and status.get("phase") == "Ready",
                                           rolled_out=_condition(status, "UpToDate"))
        await self._write_status(body, status)
        observe_startup(new_stage_values(current_status.get("startup"), status["startup"]), status["startup"])
        polls = [want.rollout.requeue if want.rollout is not None else None,
                 self._group_poll(key, applied.workload) if want.workload[0] == "LeaderWorkerSet"
                 and want.workload_current else None]
        return min((p for p in polls if p is not None), default=None)

    def _group_poll(self, key: Key, group: dict[str, Any] | None) -> float | None:
        """Seconds until a moving LeaderWorkerSet is read again, None once it is at rest: the
        pass that sees the group become ready must not hang on one watch event (under kopf, a
        CRD installed after start-up could stay unwatched, and the group's status never came)."""
        if group_at_rest(group):
            self.group_polls.pop(key, None)
            return None
        n = self.group_polls.get(key, 0) + 1
        self.group_polls[key] = n
        return min(GROUP_POLL_MAX_SECONDS, 2.0 ** min(n, 10))

    def _startup_inputs(self, key: Key, vd: VLLMDeployment, plan: ServingPlan, planning_seconds: float) -> StartupInputs:
        """What status.startup is computed from: reads of the store only."""
        job = None if vd.spec.model.is_pvc else download_job_name(plan)
        return StartupInputs(planning_seconds=planning_seconds,
                             download_report=self.store.downloads.get((vd.namespace, job)) if job else None,
                             job=self.store.child("Job", vd.namespace, job) if job else None,
                             pods=tuple(self.store.server_pods(key)), marks=self.store.startup_marks)

    async def _plan(self, key: Key, vd: VLLMDeployment,
                    current_status: dict[str, Any]) -> tuple[ServingPlan, PlanNote | None] | PlanOutcomeFailure:
        """The serving plan from the hub's metadata, or the last plan in status while the hub
        cannot be read (an outage must not turn a serving model Failed)."""
        config = index = None
        # Hub models: the config is read even when every size is explicit, so that sizes vLLM
        # would refuse (TP not dividing the heads) fail here, not in a crash-looping pod.
        hub_error: HubError | None = None
        if not vd.spec.model.is_pvc:
            try:
                token = await self.secrets.value(vd.namespace, vd.spec.cache.token_secret_ref)
                meta = await self.hub.metadata(vd.spec.model.name, vd.spec.model.revision,
                                               endpoint=vd.spec.cache.endpoint, token=token)
                config, index = meta.config, meta.safetensors_index
            except HubError as exc:
                hub_error = exc.fresh()  # not exc: its traceback holds this frame (a cycle)
        shared = cache_shared(self.store, vd)
        kept = last_known_plan(vd, current_status, cache_shared=shared, image=self.settings.vllm_image)
        if hub_error is not None and not hub_error.permanent and kept is not None:
            return kept, PlanNote("LastKnownPlan", f"the model's metadata cannot be read ({hub_error.message}); "
                                                   f"serving with the last plan: {kept.parallelism_reason}")
        # Sticky: the kept plan stands while the spec asks for what it was made for and some
        # nodes still hold it, so a node coming, going or being relabelled restarts no pod.
        no_fit = plan_no_longer_fits(vd, kept, self.store.gpu_nodes()) if kept is not None else None
        if kept is not None and hub_error is None and no_fit is None:
            return kept, kept_plan_note(current_status)
        try:
            plan = decide_serving_plan(vd, config=config, safetensors_index=index, nodes=self.store.gpu_nodes(),
                                       cache_shared=shared, image=self.settings.vllm_image)
        except PlanFailure as exc:
            if hub_error is not None and exc.reason == "ModelConfigUnavailable":
                retry = None if hub_error.permanent else self._backoff(key)
                return PlanOutcomeFailure(Failure(hub_error.reason, hub_error.message), retry)
            if no_fit is not None:
                exc = PlanFailure("PlanNoLongerFits", f"{no_fit}; and no new plan: {exc.message}", retry=exc.retry)
            return PlanOutcomeFailure(Failure(exc.reason, exc.message), self._backoff(key) if exc.retry else None)
        if no_fit is not None:
            log.warning("%s/%s: re-planned: %s", vd.namespace, vd.name, no_fit)
            return plan, PlanNote("PlanNoLongerFits", f"{no_fit}; re-planned: {plan.parallelism_reason}")
        return plan, None

    async def _api_key_digest(self, vd: VLLMDeployment) -> str | None:
        """A salted digest of the API key (never the key): its change rolls the server pods."""
        key = await self.secrets.value(vd.namespace, vd.spec.auth.api_key_secret_ref)
        return None if key is None else short_hash(vd.uid, key, length=16)

    # --- helpers ---------------------------------------------------------------------------------

    async def _write_status(self, body: dict[str, Any], status: dict[str, Any]) -> None:
        meta = body["metadata"]
        current = body.get("status") or {}
        if "startup" in current and "startup" not in status:  # a failing pass keeps the rollout's timings
            status = {**status, "startup": current["startup"]}
        if not status_differs(current, status):
            return
        patch = status_patch(current, status)
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
            self.store.vllmds[key] = trim(result)

    async def _rollout_event(self, body: dict[str, Any], current_status: dict[str, Any],
                             condition: tuple[str, str, str, str]) -> None:
        """A Warning Event when the Progressing condition turns to a reason users must see
        (a recreate without spare GPUs is announced before the first pod goes: awaited here)."""
        _, _, reason, message = condition
        before: dict[str, Any] = next(
            (c for c in current_status.get("conditions") or [] if c.get("type") == PROGRESSING), {})
        if reason not in EVENT_TYPES or before.get("reason") == reason:
            return
        try:
            await self.client.create_event(body, type_=EVENT_TYPES[reason], reason=reason, message=message)
        except (TimeoutError, ApiError, OSError) as exc:
            log.info("event for %s not posted: %s", body["metadata"]["name"], exc)

    async def _event(self, body: dict[str, Any], status: dict[str, Any]) -> None:
        ready = next((c for c in status.get("conditions", []) if c["type"] == "Ready"), None)
        failed = status.get("phase") == "Failed"
        reason = ready["reason"] if ready else str(status.get("phase"))
        message = f"phase {status.get('phase')}: {ready['message'] if ready else ''}".strip()
        try:
            await self.client.create_event(body, type_="Warning" if failed else "Normal", reason=reason, message=message)
        except (TimeoutError, ApiError, OSError) as exc:
            log.info("event for %s not posted: %s", body["metadata"]["name"], exc)





def status_patch(current: dict[str, Any], status: dict[str, Any]) -> dict[str, Any]:
    """The merge patch that turns `current` into `status`: null removes what no longer applies,
    at the top level and inside status.startup (a merge patch merges nested objects, and a new
    rollout's block must not keep the last one's stages)."""
    patch = dict(status)
    for stale in set(current) - set(status):
        patch[stale] = None
    old_startup, new_startup = current.get("startup"), status.get("startup")
    if isinstance(old_startup, dict) and isinstance(new_startup, dict):
        patch["startup"] = {**dict.fromkeys(sorted(set(old_startup) - set(new_startup))), **new_startup}
    return patch


def _condition(status: dict[str, Any], type_: str) -> bool:
    return any(c.get("type") == type_ and c.get("status") == "True" for c in status.get("conditions") or [])


def observe_startup(stages: dict[str, float], startup: dict[str, Any]) -> None:
    """The histograms see each rollout's stage once, when status first shows it."""
    for stage, seconds in stages.items():
        metrics.STARTUP_STAGE_SECONDS.labels(stage=stage).observe(seconds)
    if "download" in stages and startup.get("downloadBytesPerSecond"):
        metrics.DOWNLOAD_BYTES_PER_SECOND.observe(float(startup["downloadBytesPerSecond"]))


def kept_plan_note(status: dict[str, Any]) -> PlanNote | None:
    """A re-plan forced by the nodes stays reported for as long as its plan is kept (not only
    for the one pass that made it); any other kept plan is simply Planned."""
    cond = next((c for c in status.get("conditions") or [] if c.get("type") == "ParallelismPlanned"), None)
    if cond is not None and cond.get("status") == "True" and cond.get("reason") == "PlanNoLongerFits":
        return PlanNote("PlanNoLongerFits", str(cond.get("message") or ""))
    return None


def _unparsed(body: dict[str, Any]) -> VLLMDeployment:
    """Identity of an object whose spec did not parse, so its status can still be written."""
    from scibox_operator.api.spec import ModelSource, VLLMDeploymentSpec

    meta = body.get("metadata") or {}
    return VLLMDeployment(meta.get("name", ""), meta.get("namespace", ""), meta.get("uid", ""),
                          int(meta.get("generation") or 0),
                          VLLMDeploymentSpec.model_construct(model=ModelSource.model_construct(name="?")))
