"""What the rollout decision needs from the store, and the operator-wide budget of rollouts the
operator itself causes (at most N VLLMDeployments at a time; reconcile/rollout.py)."""

from __future__ import annotations

import itertools
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from scibox_operator.api.names import FAILED_TEMPLATE_ANNOTATION, OWNER_NAME_LABEL, ROLLOUT_ANNOTATION
from scibox_operator.api.spec import VLLMDeployment
from scibox_operator.planning.serving_plan import ServingPlan
from scibox_operator.reconcile.rollout import (
    CAUSE_OPERATOR,
    RolloutInputs,
    RolloutOutcome,
    _annotation,
    capacity,
)
from scibox_operator.reconcile.status import rollout_condition
from scibox_operator.runtime.store import Key, Store

log = logging.getLogger(__name__)


def _name(key: Key) -> str:
    return f"{key[0]}/{key[1]}"


@dataclass
class OperatorRolloutSlots:
    """Which VLLMDeployments roll because the operator's rendering changed, and which wait.
    Checked and updated with no await in between (one event loop), so two passes cannot both
    take the last slot. After a restart the holders are re-read from the workloads'
    annotations before the first decision."""

    limit: int = 1
    holders: dict[Key, None] = field(default_factory=dict)
    waiting: dict[Key, int] = field(default_factory=dict)
    _seeded: bool = False
    _order: itertools.count[int] = field(default_factory=itertools.count)

    def seed(self, store: Store) -> None:
        if self._seeded:
            return
        self._seeded = True
        for kind in ("Deployment", "LeaderWorkerSet"):
            for (ns, _), live in store.children.get(kind, {}).items():
                record = _annotation(live, ROLLOUT_ANNOTATION) or {}
                failed = _annotation(live, FAILED_TEMPLATE_ANNOTATION) or {}
                owner = ((live.get("metadata") or {}).get("labels") or {}).get(OWNER_NAME_LABEL)
                if not owner:
                    continue
                if failed.get("cause") == CAUSE_OPERATOR:  # a failed upgrade holds the queue
                    self.holders[(ns, owner)] = None
                    continue
                if record.get("cause") != CAUSE_OPERATOR:
                    continue
                replicas = int((live.get("spec") or {}).get("replicas") or 0)
                if rollout_condition(replicas, live, True)[0] != "True":
                    self.holders[(ns, owner)] = None

    def view(self, key: Key) -> tuple[bool, tuple[str, ...], tuple[str, ...]]:
        """(may this key start an operator-caused rollout now, the queue, the holders)."""
        queue = sorted(self.waiting, key=lambda k: self.waiting[k])
        if key not in self.waiting:
            queue.append(key)
        free = self.limit - len(self.holders)
        slot = key in self.holders or (free > 0 and queue.index(key) < free)
        return slot, tuple(_name(k) for k in queue if k in self.waiting), tuple(_name(k) for k in self.holders)

    def update(self, key: Key, outcome: RolloutOutcome | None) -> list[Key]:
        """Record this pass's outcome; returns the waiting keys to run again when a slot freed."""
        if outcome is not None and outcome.holds_slot:
            if key not in self.holders:
                log.info("%s/%s: operator-caused rollout started (rolling: %s)", *key, list(self.holders))
            self.holders[key] = None
            self.waiting.pop(key, None)
            return []
        if outcome is not None and outcome.state == "Queued":
            self.waiting.setdefault(key, next(self._order))
            return []
        return self.release(key)

    def release(self, key: Key) -> list[Key]:
        self.waiting.pop(key, None)
        if self.holders.pop(key, 0) is None:
            log.info("%s/%s: operator-caused rollout finished", *key)
            return sorted(self.waiting, key=lambda k: self.waiting[k])
        return []


def rollout_inputs(store: Store, vd: VLLMDeployment, plan: ServingPlan, *, slots: OperatorRolloutSlots,
                   current_status: Mapping[str, Any], now: datetime, api_key_digest: str | None) -> RolloutInputs:
    """A snapshot for decide_rollout (no I/O): free GPUs, the server pods, the slot budget."""
    key = (vd.namespace, vd.name)
    slots.seed(store)
    slot, queue, rolling = slots.view(key)
    kept = current_status.get("rollout") or {}
    announced, completed = kept.get("announcedRecreate"), kept.get("completedTemplate")
    return RolloutInputs(capacity=capacity(vd, plan, store.gpu_nodes(), store.gpus_by_node, store.node_labels), now=now,
                         pods=tuple(store.server_pods(key)), announced=str(announced) if announced else None,
                         completed=str(completed) if completed else None,
                         slot=slot, queue=queue, rolling=rolling, limit=slots.limit, api_key_digest=api_key_digest,
                         kept_inputs=str(kept["inputs"]) if kept.get("inputs") else None,
                         prober_ready=int(current_status.get("readyReplicas") or 0))
