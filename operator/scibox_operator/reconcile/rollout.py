"""Safe rollouts (issue 20): how a new pod template reaches the pods, decided from what the
operator sees (pure: no I/O; every input arrives in `RolloutInputs`).

- `rollout.strategy: Auto` (the default) picks, when the template changes:
  * `Surge`: one more replica fits in the free GPUs of the plan's product (node allocatable
    minus what the pods bound there request): start a new replica, drain an old one once the
    new one is ready, repeat (maxSurge 1, maxUnavailable 0);
  * `OneAtATime`: no free GPUs and replicas > 1: stop one old replica, start its replacement,
    repeat (maxSurge 0, maxUnavailable 1): never more than one replica's capacity missing;
  * `Recreate`: no free GPUs and one replica: announced first (a Warning Event and the
    `Progressing` condition name the GPUs that were missing), applied on the next pass.
  The choice is kept in the workload's `scibox.io/rollout` annotation for as long as the
  rollout of that template lasts: the surge pod itself takes the free GPUs, and re-deciding
  mid-rollout would flip a surge into taking a serving replica down.
- Rollback: a template whose pods are not ready within `startupTimeoutSeconds` is replaced by
  the last template that served (`scibox.io/last-good-template`); the failed one is remembered
  (`scibox.io/failed-template`, with its reason) and not retried until the spec renders another.
  Both live on the workload the VLLMDeployment owns, so an operator restart loses neither.
- Operator upgrades: a template change that no spec edit caused (same generation, plan and API
  key; e.g. a new default image) is an operator-caused rollout; at most `limit` of them run at a
  time (`RolloutInputs.slot`), the others keep their live workload untouched and report their
  place in the queue.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

from scibox_operator.api.names import (
    FAILED_TEMPLATE_ANNOTATION,
    LAST_GOOD_TEMPLATE_ANNOTATION,
    ROLLOUT_ANNOTATION,
)
from scibox_operator.api.spec import VLLMDeployment, short_hash
from scibox_operator.planning.serving_plan import GpuNode, ServingPlan, matching_gpu_nodes
from scibox_operator.reconcile.diff import contains
from scibox_operator.reconcile.status import rollout_condition

GPU = "nvidia.com/gpu"
PROGRESSING = "Progressing"
# Progressing reasons
ROLLING_OUT = "RollingOut"
WAITING_FOR_GPUS = "WaitingForGPUs"
RECREATE_WITHOUT_SPARE_GPUS = "RecreateWithoutSpareGPUs"
ROLLOUT_STUCK = "RolloutStuck"
ROLLED_BACK = "RolledBack"
ROLLED_OUT = "RolledOut"
QUEUED = "QueuedForOperatorUpgrade"
# Reasons worth an Event when the condition turns to them (type, from the condition's reason).
EVENT_TYPES = {RECREATE_WITHOUT_SPARE_GPUS: "Warning", ROLLED_BACK: "Warning", ROLLOUT_STUCK: "Warning",
               WAITING_FOR_GPUS: "Warning"}
# Causes
CAUSE_SPEC, CAUSE_OPERATOR, CAUSE_CREATE, CAUSE_ROLLBACK = "spec", "operator", "create", "rollback"

_TEMPLATE_PATH = {"Deployment": "template", "LeaderWorkerSet": "leaderWorkerTemplate"}


def _ts(now: datetime) -> str:
    return now.astimezone(UTC).replace(microsecond=0).strftime("%Y-%m-%dT%H:%M:%SZ")


def _parse_ts(value: Any) -> datetime | None:
    try:
        return datetime.strptime(str(value), "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
    except ValueError:
        return None


def template_digest(template: Mapping[str, Any]) -> str:
    return short_hash(json.dumps(template, sort_keys=True, separators=(",", ":")), length=16)


# --- capacity -----------------------------------------------------------------------------------

@dataclass(frozen=True)
class Capacity:
    """Free GPUs of the nodes this plan may use (allocatable minus what bound pods request)."""

    free_by_node: tuple[tuple[str, int], ...]

    def room_for_replica(self, gpus_per_pod: int, pods_per_replica: int) -> bool:
        return sum(1 for _, free in self.free_by_node if free >= gpus_per_pod) >= max(1, pods_per_replica)

    def describe(self, gpus_per_pod: int, pods_per_replica: int, product: str | None) -> str:
        what = f"{gpus_per_pod} free {GPU}" + (f" of {product}" if product else "")
        nodes = ", ".join(f"{name} {free} free" for name, free in self.free_by_node) or "no matching GPU node"
        need = f"{pods_per_replica} nodes with {what} each" if pods_per_replica > 1 else f"a node with {what}"
        return f"one more replica needs {need}; the plan's nodes have: {nodes}"


def capacity(vd: VLLMDeployment, plan: ServingPlan, nodes: list[GpuNode], used: Mapping[str, int],
             node_labels: Mapping[str, Mapping[str, str]] | None = None) -> Capacity:
    """Free GPUs per node the server pods may land on (the spec's selector, against every label
    of the node when known, and GPU product, or the product the plan was made for)."""
    out = []
    selector = vd.spec.node_selector
    unselected = replace(vd, spec=vd.spec.model_copy(update={"node_selector": {}}))
    for node in nodes:
        labels = (node_labels or {}).get(node.name)
        if labels is not None:
            if any(labels.get(k) != v for k, v in selector.items()):
                continue
            if node not in matching_gpu_nodes(unselected, [node]):  # product and memory rules
                continue
        elif node not in matching_gpu_nodes(vd, [node]):
            continue
        if plan.gpu_product and node.product != plan.gpu_product:
            continue
        out.append((node.name, max(0, node.gpus - int(used.get(node.name, 0)))))
    return Capacity(tuple(out))


def pod_gpu_request(pod: Mapping[str, Any]) -> tuple[str, int] | None:
    """(node, GPUs) a bound, not finished pod holds; None when it holds none."""
    spec = pod.get("spec") or {}
    node = spec.get("nodeName")
    if not node or ((pod.get("status") or {}).get("phase") in ("Succeeded", "Failed")):
        return None
    total = 0
    for c in spec.get("containers") or []:
        res = c.get("resources") or {}
        value = (res.get("requests") or {}).get(GPU, (res.get("limits") or {}).get(GPU, 0))
        try:
            total += int(str(value))
        except ValueError:
            continue
    return (str(node), total) if total > 0 else None


# --- inputs and outcome ---------------------------------------------------------------------------

@dataclass(frozen=True)
class RolloutInputs:
    capacity: Capacity | None = None
    now: datetime | None = None  # None (e.g. `scibox-operator render`): no timing decisions
    pods: tuple[dict[str, Any], ...] = ()  # the VLLMDeployment's server pods (store summaries)
    announced: str | None = None  # the template whose Recreate status already announced
    completed: str | None = None  # the template status saw fully rolled out (no workload write for it:
    # a Deployment's annotations count as its spec, a write would restart its rollout bookkeeping)
    slot: bool = True  # may an operator-caused rollout start now
    queue: tuple[str, ...] = ()  # VLLMDeployments waiting for a slot, in order
    rolling: tuple[str, ...] = ()  # VLLMDeployments holding one
    limit: int = 1
    api_key_digest: str | None = None
    # change_inputs() of the last pass (status.rollout.inputs): a spec edit that keeps the template
    # is recorded there, not on the workload, whose annotations count as its spec
    kept_inputs: str | None = None
    may_surge: bool = True  # False: the cache volume cannot take one more pod
    # The operator's own prober count (status.readyReplicas): it can say Serving a probe period
    # before the workload controller counts the pod ready; an edit in that gap still has a
    # template that served to return to.
    prober_ready: int = 0


@dataclass(frozen=True)
class RolloutOutcome:
    workload: dict[str, Any] | None  # what to apply; None: leave the live workload as it is
    condition: tuple[str, str, str, str]
    status: dict[str, Any]
    cause: str
    state: str  # Creating, Rolling, Done, Queued, Announcing, RolledBack, Stuck
    requeue: float | None = None

    @property
    def holds_slot(self) -> bool:
        """An operator-caused rollout under way, or one that failed: a bad upgrade stops at the
        first VLLMDeployment it breaks (the queue waits until its spec changes or it is deleted)."""
        if self.cause == CAUSE_OPERATOR and self.state in ("Rolling", "Announcing", "Stuck"):
            return True
        failed = self.status.get("failedTemplate") or {}
        return self.state == "RolledBack" and failed.get("cause") == CAUSE_OPERATOR


def _annotation(live: Mapping[str, Any] | None, name: str) -> dict[str, Any] | None:
    raw = (((live or {}).get("metadata") or {}).get("annotations") or {}).get(name)
    if not raw:
        return None
    try:
        value = json.loads(raw)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def _dump(value: Mapping[str, Any]) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


def change_inputs(vd: VLLMDeployment, plan: ServingPlan, api_key_digest: str | None) -> str:
    """What a spec (or Secret, or re-plan) change moves; a template change with these equal
    was caused by the operator itself."""
    return short_hash(str(vd.generation), api_key_digest or "", str(plan.tensor_parallel_size),
                      str(plan.pipeline_parallel_size), str(plan.gpus_per_pod), str(plan.nodes),
                      plan.gpu_product or "", length=12)


def choose_strategy(vd: VLLMDeployment, plan: ServingPlan, inputs: RolloutInputs) -> tuple[str, str, str | None]:
    """(strategy, why, what was missing) for a rollout starting now."""
    ro = vd.spec.rollout
    if ro.strategy == "Recreate":
        return "Recreate", "rollout.strategy Recreate", None
    if ro.strategy == "RollingUpdate":
        return "RollingUpdate", f"rollout.strategy RollingUpdate (maxSurge {ro.max_surge}, " \
                                f"maxUnavailable {ro.max_unavailable})", None
    cap = inputs.capacity or Capacity(())
    pods = plan.nodes if plan.multi_node else 1
    if inputs.may_surge and cap.room_for_replica(plan.gpus_per_pod, pods):
        return "Surge", f"free GPUs for one more replica ({cap.describe(plan.gpus_per_pod, pods, plan.gpu_product)})" \
                        ": a new replica starts before an old one stops", None
    missing = cap.describe(plan.gpus_per_pod, pods, plan.gpu_product) if inputs.may_surge else \
        "the cache volume can be mounted by no more pods than the replicas"
    if vd.spec.replicas > 1:
        return "OneAtATime", f"no spare GPUs ({missing}): one replica at a time is stopped and replaced", missing
    return "Recreate", f"no spare GPUs ({missing}): the only replica is stopped before its replacement starts", \
        missing


def strategy_fields(kind: str, strategy: str, vd: VLLMDeployment) -> dict[str, Any]:
    ro = vd.spec.rollout
    surge, unavailable = {"Surge": (1, 0), "OneAtATime": (0, 1), "RollingUpdate": (ro.max_surge, ro.max_unavailable),
                          "Recreate": (0, max(1, vd.spec.replicas))}[strategy]
    if kind == "Deployment":
        if strategy == "Recreate":
            return {"strategy": {"type": "Recreate"}}
        return {"strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": surge,
                                                                        "maxUnavailable": unavailable}}}
    return {"rolloutStrategy": {"type": "RollingUpdate", "rollingUpdateConfiguration": {
        "maxUnavailable": unavailable, "maxSurge": surge, "partition": 0}}}


def _counts(live: Mapping[str, Any] | None) -> tuple[int, int, int]:
    status = (live or {}).get("status") or {}
    replicas, updated = int(status.get("replicas") or 0), int(status.get("updatedReplicas") or 0)
    return updated, max(0, replicas - updated), int(status.get("readyReplicas") or 0)


def _unschedulable(pods: tuple[dict[str, Any], ...]) -> str | None:
    for pod in pods:
        for cond in (pod.get("status") or {}).get("conditions") or []:
            if cond.get("type") == "PodScheduled" and cond.get("status") == "False" \
                    and cond.get("reason") == "Unschedulable":
                return f"pod {pod['metadata'].get('name')}: {cond.get('message') or 'unschedulable'}"
    return None


def crash_reason(pods: tuple[dict[str, Any], ...]) -> str | None:
    """Why a server container does not come up, from the pods' container statuses."""
    for pod in pods:
        for cs in (pod.get("status") or {}).get("containerStatuses") or []:
            if cs.get("ready"):
                continue
            waiting = (cs.get("state") or {}).get("waiting") or {}
            term = (cs.get("state") or {}).get("terminated") or (cs.get("lastState") or {}).get("terminated") or {}
            if term and int(term.get("exitCode") or 0) != 0 or waiting.get("reason") in (
                    "CrashLoopBackOff", "CreateContainerConfigError", "ErrImagePull", "ImagePullBackOff"):
                reason = waiting.get("reason") or term.get("reason") or "Error"
                message = str(term.get("message") or waiting.get("message") or "").strip()
                tail = message[-400:].replace("\n", " | ")
                code = f" (exit code {term.get('exitCode')})" if term else ""
                return f"pod {pod['metadata'].get('name')} container {cs.get('name')}: {reason}{code}" \
                       f"{', restarts ' + str(cs.get('restartCount')) if cs.get('restartCount') else ''}" \
                       f"{': ' + tail if tail else ''}"
    return None


def _serves_only_its_template(live: Mapping[str, Any] | None, prober_ready: int) -> bool:
    """The live workload's controller has seen its template, runs no replica of another one,
    and the prober found at least one of them serving."""
    status = (live or {}).get("status") or {}
    generation = int(((live or {}).get("metadata") or {}).get("generation") or 0)
    seen = status.get("observedGeneration")
    replicas, updated = int(status.get("replicas") or 0), int(status.get("updatedReplicas") or 0)
    return prober_ready >= 1 and seen is not None and int(seen) >= generation and 0 < replicas == updated


def _appliable(template: Mapping[str, Any]) -> dict[str, Any]:
    """A live pod template as it can be applied again (no server-set null timestamp)."""
    meta = {k: v for k, v in (template.get("metadata") or {}).items() if k != "creationTimestamp"}
    return {**template, "metadata": meta}


# --- the decision ------------------------------------------------------------------------------

def decide_rollout(vd: VLLMDeployment, plan: ServingPlan, rendered: dict[str, Any], live: dict[str, Any] | None,
                   inputs: RolloutInputs) -> RolloutOutcome:
    """The workload to apply (or None: keep the live one), the Progressing condition and the
    status.rollout block, from the freshly rendered workload and the live one."""
    kind = rendered["kind"]
    path = _TEMPLATE_PATH[kind]
    new_template = rendered["spec"][path]
    target = template_digest(new_template)
    replicas = vd.spec.replicas
    change = change_inputs(vd, plan, inputs.api_key_digest)
    current = _annotation(live, ROLLOUT_ANNOTATION)
    good = _annotation(live, LAST_GOOD_TEMPLATE_ANNOTATION)
    failed = _annotation(live, FAILED_TEMPLATE_ANNOTATION)
    if failed is not None and failed.get("template") != target:
        failed = None  # the spec renders another template now: that one gets its chance
    status: dict[str, Any] = {"targetTemplate": target, "inputs": change}

    def build(template: Mapping[str, Any], record: dict[str, Any], last_good: dict[str, Any] | None,
              failure: dict[str, Any] | None) -> dict[str, Any]:
        spec = {**rendered["spec"], path: template, **strategy_fields(kind, record["strategy"], vd)}
        annotations = dict(rendered["metadata"].get("annotations") or {})
        annotations[ROLLOUT_ANNOTATION] = _dump(record)
        if last_good is not None:
            annotations[LAST_GOOD_TEMPLATE_ANNOTATION] = _dump(last_good)
        if failure is not None:
            annotations[FAILED_TEMPLATE_ANNOTATION] = _dump(failure)
        return {**rendered, "metadata": {**rendered["metadata"], "annotations": annotations}, "spec": spec}

    def counts_message() -> tuple[int, int, str]:
        new, old, ready = _counts(live)
        return new, old, f"{new} new and {old} old replicas ({ready} ready) of {replicas}"

    # 1. The failed template again: stay on the last good one until the spec changes.
    if failed is not None and good is not None and current is not None:
        status.update(strategy=current.get("strategy"), cause=CAUSE_ROLLBACK, servingTemplate=good.get("template"),
                      failedTemplate=failed)
        body = build(good.get("body") or {}, current, good, failed)
        return RolloutOutcome(body, (PROGRESSING, "False", ROLLED_BACK,
                              f"the template of generation {failed.get('generation')} could not become ready "
                              f"({failed.get('reason')}); serving the last template that served "
                              f"({good.get('template')}); it is not retried until the spec changes"),
                              status, CAUSE_ROLLBACK, "RolledBack")

    if live is None:
        strategy, _, _ = choose_strategy(vd, plan, inputs)
        record = {"template": target, "strategy": strategy, "cause": CAUSE_CREATE, "inputs": change}
        status.update(strategy=strategy, cause=CAUSE_CREATE, newReplicas=0, oldReplicas=0)
        return RolloutOutcome(build(new_template, record, None, None),
                              (PROGRESSING, "True", ROLLING_OUT, f"creating the workload: 0 new and 0 old replicas "
                                                                 f"(0 ready) of {replicas} ({strategy})"),
                              status, CAUSE_CREATE, "Creating")

    live_template = (live.get("spec") or {}).get(path) or {}
    if current is None and contains(live_template, new_template):
        # A workload from before rollouts were tracked, already running this template: adopt it
        # (metadata and strategy only: no pod restarts).
        strategy, _, _ = choose_strategy(vd, plan, inputs)
        current = {"template": target, "strategy": strategy, "cause": CAUSE_SPEC, "inputs": change}

    if current is not None and current.get("template") == target:
        record = dict(current)
        strategy = str(record.get("strategy") or "Recreate")
        cause = str(record.get("cause") or CAUSE_SPEC)
        status.update(strategy=strategy, cause=cause)
        new, old, counted = counts_message()
        status.update(newReplicas=new, oldReplicas=old)
        done = inputs.completed == target or rollout_condition(replicas, live, True)[0] == "True"
        if done:
            status["completedTemplate"] = target
            return RolloutOutcome(build(new_template, record, good, None),
                                  (PROGRESSING, "False", ROLLED_OUT, f"all {replicas} replicas run template "
                                                                     f"{target} ({strategy})"),
                                  status, cause, "Done")
        since = _parse_ts(record.get("since"))
        now = inputs.now
        timeout = vd.spec.rollout.startup_timeout_seconds
        elapsed = (now - since).total_seconds() if now is not None and since is not None else 0.0
        if since is not None and elapsed >= timeout:
            why = crash_reason(inputs.pods) or f"its pods were not ready within startupTimeoutSeconds {timeout}"
            if vd.spec.rollout.auto_rollback and good is not None and good.get("template") != target \
                    and now is not None:
                failure = {"template": target, "generation": vd.generation, "reason": why[:1000], "cause": cause}
                back = {"template": good.get("template"), "strategy": strategy, "cause": CAUSE_ROLLBACK,
                        "inputs": change, "since": _ts(now)}
                status.update(cause=CAUSE_ROLLBACK, servingTemplate=good.get("template"), failedTemplate=failure)
                return RolloutOutcome(build(good.get("body") or {}, back, good, failure),
                                      (PROGRESSING, "False", ROLLED_BACK,
                                       f"the template of generation {vd.generation} could not become ready ({why}); "
                                       f"rolled back to the last template that served ({good.get('template')}); "
                                       "it is not retried until the spec changes"),
                                      status, CAUSE_ROLLBACK, "RolledBack")
            return RolloutOutcome(build(new_template, record, good, None),
                                  (PROGRESSING, "False", ROLLOUT_STUCK, f"not finished after {int(elapsed)}s "
                                   f"(startupTimeoutSeconds {timeout}): {counted}; {why}"),
                                  status, cause, "Stuck")
        requeue = max(1.0, timeout - elapsed + 1) if since is not None else None
        pending = _unschedulable(inputs.pods)
        if pending is not None and strategy in ("Surge", "RollingUpdate"):
            reason, message = WAITING_FOR_GPUS, f"{counted}; the new replica waits for GPUs: {pending}"
        elif strategy == "Recreate" and inputs.announced == target:
            reason, message = RECREATE_WITHOUT_SPARE_GPUS, f"{counted}; recreating (announced: no spare GPUs)"
            status["announcedRecreate"] = target
        elif cause == CAUSE_CREATE:
            reason, message = ROLLING_OUT, f"creating the workload: {counted} ({strategy})"
        else:
            reason, message = ROLLING_OUT, f"{counted} ({strategy})"
        if cause == CAUSE_OPERATOR:
            status["operatorRollouts"] = {"limit": inputs.limit, "rolling": list(inputs.rolling)}
        return RolloutOutcome(build(new_template, record, good, None), (PROGRESSING, "True", reason, message),
                              status, cause, "Rolling", requeue)

    # 2. A new template for a live workload: a rollout starts.
    # Operator-caused: nothing a spec, Secret or plan change moves differs from the last pass (or
    # from when the serving template was applied).
    cause = CAUSE_OPERATOR if current is None or change in (current.get("inputs"), inputs.kept_inputs) \
        else CAUSE_SPEC
    if current is not None and current.get("cause") == CAUSE_CREATE and current.get("template") != target \
            and rollout_condition(replicas, live, True)[0] != "True" and cause == CAUSE_OPERATOR:
        cause = CAUSE_SPEC  # still being created: nothing serves that a slot would protect
    status.update(cause=cause)
    if inputs.completed is not None:
        status["completedTemplate"] = inputs.completed  # what served, kept while announced or queued
    if cause == CAUSE_OPERATOR and not inputs.slot:
        me = f"{vd.namespace}/{vd.name}"
        position = inputs.queue.index(me) + 1 if me in inputs.queue else len(inputs.queue) + 1
        status.update(queuePosition=position, operatorRollouts={"limit": inputs.limit,
                                                                 "rolling": list(inputs.rolling)})
        return RolloutOutcome(None, (PROGRESSING, "False", QUEUED,
                              f"the operator's new rendering changes the pod template; at most {inputs.limit} "
                              f"VLLMDeployment(s) roll at a time for that: waiting, position {position} "
                              f"(rolling now: {', '.join(inputs.rolling) or 'none'})"),
                              status, cause, "Queued", 5.0)
    strategy, why, missing = choose_strategy(vd, plan, inputs)
    status.update(strategy=strategy)
    # What serves now is what a failure of this rollout returns to (taken before it starts:
    # the live template as it is, server defaults included).
    serving = (current or {}).get("template") or template_digest(live_template)
    if inputs.completed == serving or rollout_condition(replicas, live, True)[0] == "True" \
            or _serves_only_its_template(live, inputs.prober_ready):
        good = {"template": serving, "body": _appliable(live_template)}
    if missing is not None and strategy == "Recreate" and replicas > 0 and inputs.announced != target:
        # Said before the first pod goes: the next pass applies it. Nothing of this change is
        # applied yet, so status keeps the inputs the live template was made for: recorded
        # now, they would make the next pass take this spec edit for an operator-caused change
        # (and queue it behind the upgrade slots).
        status["announcedRecreate"] = target
        previous = inputs.kept_inputs or (current or {}).get("inputs")
        if previous:
            status["inputs"] = previous
        else:
            status.pop("inputs", None)
        return RolloutOutcome(None, (PROGRESSING, "True", RECREATE_WITHOUT_SPARE_GPUS,
                              f"the pod template changes and {why} (the model does not serve while the new one "
                              "loads)"), status, cause, "Announcing", 1.0)
    if strategy == "Recreate" and inputs.announced == target:
        status["announcedRecreate"] = target
    record = {"template": target, "strategy": strategy, "cause": cause, "inputs": change}
    if inputs.now is not None:
        record["since"] = _ts(inputs.now)
    new, old, counted = counts_message()
    status.update(newReplicas=new, oldReplicas=old)
    return RolloutOutcome(build(new_template, record, good, None),
                          (PROGRESSING, "True", ROLLING_OUT, f"rolling out template {target}: {why}"),
                          status, cause, "Rolling", float(vd.spec.rollout.startup_timeout_seconds) + 1)
