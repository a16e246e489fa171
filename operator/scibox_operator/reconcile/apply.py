"""Apply a Desired: write the children that differ, remove the ones no longer wanted, and touch
nothing this VLLMDeployment does not own (the only module that writes children)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Protocol

from scibox_operator import metrics
from scibox_operator.api.spec import VLLMDeployment
from scibox_operator.reconcile.desired import Desired, OwnerUpdate
from scibox_operator.reconcile.diff import needs_apply, owned_by
from scibox_operator.reconcile.status import Failure
from scibox_operator.runtime.kube import KINDS, ApiError, KubeClient
from scibox_operator.runtime.store import Store

# Kinds whose pods mount the cache claim.
MOUNTING_KINDS = ("Job", "Deployment", "LeaderWorkerSet")


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


def _outcome(results: list[Any]) -> tuple[ChildRejected | None, list[tuple[str, str]]]:
    """The first rejection and the sorted conflicts of a gather of child writes; any other error
    is raised. `results` is emptied first: the traceback holds the callers' frames, and they must
    not hold the error back."""
    rejected = next((r for r in results if isinstance(r, ChildRejected)), None)
    conflicts = sorted({r.key for r in results if isinstance(r, ChildConflict)})
    error = next((r for r in results if isinstance(r, BaseException)
                  and not isinstance(r, (ChildRejected, ChildConflict))), None)
    results.clear()
    if error is not None:
        try:
            raise error
        finally:
            error = None
    return rejected, conflicts


@dataclass(frozen=True)
class Applied:
    workload: dict[str, Any] | None
    conflicts: tuple[tuple[str, str], ...] = ()
    rejected: ChildRejected | None = None


class Owner(Protocol):
    """Whose children these are: a VLLMDeployment or a VLLMGateway (namespace and uid suffice)."""

    @property
    def namespace(self) -> str: ...

    @property
    def uid(self) -> str: ...


class Applier:
    def __init__(self, client: KubeClient, store: Store):
        self.client = client
        self.store = store

    async def apply(self, vd: VLLMDeployment, want: Desired) -> Applied:
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
            *(self._update_owners(vd, update) for update in want.owner_updates),
            return_exceptions=True,
        )
        rejected, conflicts = _outcome(results)
        kind, name = want.workload
        workload = self.store.child(kind, vd.namespace, name)
        if kind == "LeaderWorkerSet" and want.workload_current:
            # The group's status is read from the API: its watch starts only once the CRD is
            # established and misses what happens while it reconnects (multi-node objects are
            # few; their pods' events and the reconciler's poll of a moving group bring these
            # passes).
            workload = await self._read_fresh(kind, vd.namespace, name) or workload
        return Applied(workload=workload, conflicts=tuple(conflicts), rejected=rejected)

    async def apply_children(self, owner: Owner, children: Iterable[dict[str, Any]],
                             removals: Iterable[tuple[str, str]]) -> Applied:
        """The same writes for an owner without a workload or cache (a VLLMGateway): apply the
        children that differ, remove the unwanted ones that are the owner's, touch nothing else."""
        results = await asyncio.gather(*(self._ensure_child(owner, c) for c in children),
                                       *(self._remove_child(owner, kind, name) for kind, name in removals),
                                       return_exceptions=True)
        rejected, conflicts = _outcome(results)
        return Applied(workload=None, conflicts=tuple(conflicts), rejected=rejected)

    async def _ensure_child(self, vd: Owner, child: dict[str, Any]) -> None:
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

    async def _remove_child(self, vd: Owner, kind: str, name: str) -> None:
        live = self.store.child(kind, vd.namespace, name)
        if live is None or not owned_by(kind, live, vd.uid):
            return  # what is not ours stays, even when it carries our labels
        await self.client.delete(kind, vd.namespace, name, uid=(live.get("metadata") or {}).get("uid"))

    async def _update_owners(self, vd: Owner, update: OwnerUpdate) -> None:
        """A merge patch of the owner references alone (server-side apply would have to send the
        whole immutable object again); the uid in the body is the server's precondition."""
        live = self.store.child(update.kind, vd.namespace, update.name)
        if live is None or not owned_by(update.kind, live, vd.uid) \
                or (live.get("metadata") or {}).get("uid") != update.uid:
            return
        body = {"metadata": {"uid": update.uid, "ownerReferences": list(update.owner_references)}}
        try:
            result = await self.client.request("PATCH", KINDS[update.kind].path(vd.namespace, update.name), body=body,
                                               content_type="application/merge-patch+json")
        except ApiError as exc:
            if exc.status in (404, 409):  # gone, or replaced by another Job since: the next pass sees it
                return
            raise
        metrics.APPLIES.labels(kind=update.kind).inc()
        result.setdefault("kind", update.kind)
        self.store.put_child(update.kind, result)

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
