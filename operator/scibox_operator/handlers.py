"""kopf handlers: thin. Watch events feed the controller's store and mark owners dirty.

Run with `kopf run -m scibox_operator.handlers --all-namespaces` (or `scibox-operator run`).
Settings come from the environment (see README: SCIBOX_*).
"""

from __future__ import annotations

import os
from typing import Any

import kopf

from scibox_operator import metrics
from scibox_operator.api.names import GATEWAY_PLURAL, GROUP, PLURAL, VERSION, WATCHED_CRDS
from scibox_operator.config import Settings
from scibox_operator.planning.serving_plan import gpu_node_from_body
from scibox_operator.readiness.prober import Prober
from scibox_operator.reconcile.gateway import GatewayReconciler
from scibox_operator.reconcile.policy import PolicyError
from scibox_operator.reconcile.reconciler import Controller
from scibox_operator.reconcile.rollout import pod_gpu_request
from scibox_operator.render.common import DOWNLOAD, MANAGED_BY, MANAGED_BY_LABEL, SERVER
from scibox_operator.runtime.kube import KINDS, KubeClient
from scibox_operator.runtime.leader import LeaderElector, Timing
from scibox_operator.runtime.optional_watch import OPTIONAL_KINDS
from scibox_operator.runtime.store import (
    CHILD_KINDS,
    LWS_NAME_LABEL,
    crd_established,
    owner_summary,
    storage_class_summary,
    trim,
)

# group, version, plural of each kind the operator renders (and so watches), from the one kind table
CHILD_RESOURCES = {kind: (KINDS[kind].group, KINDS[kind].version, KINDS[kind].plural) for kind in CHILD_KINDS}
OURS = {MANAGED_BY_LABEL: MANAGED_BY}
# The links between a server pod and its workload (ownership.py): kept as owner summaries only,
# never reconciled. A Deployment's ReplicaSets carry its pod template's labels, ours; the leader
# StatefulSet of a LeaderWorkerSet carries only LWS's own name label.
OWNER_CHAIN_RESOURCES = {
    "ReplicaSet": (("apps", "v1", "replicasets"), OURS),
    "StatefulSet": (("apps", "v1", "statefulsets"), {LWS_NAME_LABEL: kopf.PRESENT}),
}


def _credentials(settings: kopf.OperatorSettings) -> Any:
    return (kopf.login_with_service_account(settings=settings)
            or kopf.login_with_kubeconfig(settings=settings))


class EventOnlyDiffBase(kopf.DiffBaseStorage):
    """This operator has only watch-event handlers, so kopf's per-event "essence" (a deep copy of
    every body, for create/update handlers' diffs) is never read: measured at 11% of the
    operator's CPU at 1000 objects, now skipped."""

    def build(self, *, body: kopf.Body, extra_fields: Any = None) -> kopf.BodyEssence:
        return kopf.BodyEssence()

    def fetch(self, *, body: kopf.Body) -> kopf.BodyEssence | None:
        return None

    def store(self, *, body: kopf.Body, patch: kopf.Patch, essence: kopf.BodyEssence) -> None:
        return None


@kopf.on.login()
async def login(settings: kopf.OperatorSettings, **_: Any) -> Any:
    return _credentials(settings)


@kopf.on.startup()
async def startup(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
    # kopf would turn handler log lines into Kubernetes Events: writes the operator does not need.
    settings.posting.enabled = False
    settings.persistence.diffbase_storage = EventOnlyDiffBase()
    settings.watching.server_timeout = 300
    settings.watching.client_timeout = 330
    client = KubeClient(lambda: _credentials(settings), on_request=metrics.record_request)
    try:
        controller = Controller(client, Settings.from_env())
    except PolicyError as exc:  # the administrator's settings: no retry can fix them
        raise kopf.PermanentError(f"refusing to start: {exc}") from None
    memo.controller = controller
    memo.gateways = GatewayReconciler(client, controller.store, controller.applier, controller.secrets,
                                      controller.settings.router_image, active=controller.active)
    # before the first watch event: Jobs that finished before this moment are not counted
    memo.downloads = metrics.DownloadRecorder()
    metrics.register_state_collector(controller.store, controller.queue)
    await controller.sync.prime()
    controller.start()
    memo.gateways.start()
    memo.prober = Prober(controller)
    memo.prober.start()
    memo.metrics_server = await metrics.serve(int(os.environ.get("SCIBOX_METRICS_PORT", "8080")),
                                              os.environ.get("SCIBOX_METRICS_ADDR", "0.0.0.0"))
    lease = os.environ.get("SCIBOX_LEADER_ELECTION_NAMESPACE")
    if lease:
        memo.elector = LeaderElector(client, namespace=lease, timing=Timing.from_env(), on_change=lambda leading: (
            controller.became_leader() if leading else controller.active.clear()))
        memo.elector.start()
    else:
        controller.active.set()


@kopf.on.cleanup()
async def cleanup(memo: kopf.Memo, **_: Any) -> None:
    if getattr(memo, "elector", None):
        await memo.elector.stop()
    if getattr(memo, "metrics_server", None):
        await memo.metrics_server.cleanup()
    await memo.prober.stop()
    await memo.gateways.stop()
    await memo.controller.stop()
    await memo.controller.client.close()


@kopf.on.event(GROUP, VERSION, PLURAL)
async def vllmdeployment_event(event: dict[str, Any], body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    controller: Controller = memo.controller
    key = (body.metadata.namespace, body.metadata.name)
    if event["type"] == "DELETED":
        # The users left of a shared cache claim may now own it (or its Job) differently.
        claim = (controller.store.vllmds.get(key, {}).get("status") or {}).get("cacheClaim")
        controller.store.forget_vllmd(key)
        if claim:
            controller.enqueue([k for k, v in controller.store.vllmds.items()
                                if k[0] == key[0] and (v.get("status") or {}).get("cacheClaim") == claim])
        return
    known = controller.store.vllmds.get(key)
    if known is not None and known["metadata"].get("resourceVersion") == body.metadata.get("resourceVersion"):
        return  # our own status write coming back: already in the store
    controller.store.vllmds[key] = trim(body)
    controller.enqueue([key])


def _child_handler(kind: str):
    async def handler(event: dict[str, Any], body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
        if kind == "Job":
            memo.downloads.job_event(event["type"], body)
        memo.controller.child_event(kind, event["type"], body)
    handler.__name__ = f"{kind.lower()}_event"
    return handler


# The kinds whose CRDs may come and go are watched by the controller itself (optional_watch.py).
for _kind, (_group, _version, _plural) in CHILD_RESOURCES.items():
    if _kind in OPTIONAL_KINDS:
        continue
    kopf.on.event(_group, _version, _plural, labels=OURS, id=f"{_kind.lower()}-event")(_child_handler(_kind))


def _owner_chain_handler(kind: str):
    async def handler(event: dict[str, Any], body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
        store = memo.controller.store
        if event["type"] == "DELETED":
            store.drop_child(kind, body.metadata.namespace, body.metadata.name)
        else:
            store.put_child(kind, owner_summary(body))
    handler.__name__ = f"{kind.lower()}_owner_event"
    return handler


for _kind, ((_group, _version, _plural), _labels) in OWNER_CHAIN_RESOURCES.items():
    kopf.on.event(_group, _version, _plural, labels=_labels, id=f"{_kind.lower()}-owner-event")(
        _owner_chain_handler(_kind))


@kopf.on.event("", "v1", "pods", labels={**OURS, "app.kubernetes.io/component": SERVER})
async def server_pod_event(event: dict[str, Any], body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    controller: Controller = memo.controller
    if event["type"] == "DELETED":
        controller.store.drop_pod(body.metadata.namespace, body.metadata.name)
    else:
        controller.sync.observe_pod(body)
        memo.prober.pod_event(body)  # event-driven readiness: probe a pod as soon as it runs


@kopf.on.event("", "v1", "pods", labels={**OURS, "app.kubernetes.io/component": DOWNLOAD})
async def download_pod_event(event: dict[str, Any], body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    """The pod's termination message carries the bytes it downloaded (metrics); a new download
    report brings a pass of the claim's users."""
    controller: Controller = memo.controller
    memo.downloads.pod_event(event["type"], body)
    if event["type"] == "DELETED":
        controller.store.drop_pod(body.metadata.namespace, body.metadata.name)
    elif controller.sync.observe_pod(body):
        controller.enqueue(controller.store.owners_of(body))


@kopf.on.event("", "v1", "pods", id="gpu-pod-event")
async def gpu_pod_event(**kwargs: Any) -> None:
    """Every pod's GPU requests on its node: the free GPUs a rollout may surge into."""
    body = kwargs["body"]
    key = (str(body.metadata.namespace), str(body.metadata.name))
    held = None if kwargs["event"]["type"] == "DELETED" else pod_gpu_request(body)
    kwargs["memo"].controller.store.set_gpu_pod(key, held)


@kopf.on.event("", "v1", "nodes")
async def node_event(event: dict[str, Any], body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    controller: Controller = memo.controller
    name = body.metadata.name
    before = controller.store.nodes.get(name)
    if event["type"] == "DELETED":
        controller.store.nodes.pop(name, None)
        controller.store.node_labels.pop(name, None)
    else:
        controller.store.nodes[name] = gpu_node_from_body(body)
        controller.store.node_labels[name] = dict(body.metadata.labels or {})
    if controller.store.nodes.get(name) != before:
        controller.enqueue_all()  # the GPU inventory changed: auto plans may change


@kopf.on.event("storage.k8s.io", "v1", "storageclasses")
async def storage_class_event(event: dict[str, Any], body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    controller: Controller = memo.controller
    if event["type"] == "DELETED":
        controller.store.storage_classes.pop(body.metadata.name, None)
    else:
        controller.store.storage_classes[body.metadata.name] = storage_class_summary(body)


@kopf.on.event("apiextensions.k8s.io", "v1", "customresourcedefinitions",
               when=lambda body, **_: body.get("metadata", {}).get("name") in WATCHED_CRDS)
async def optional_crd_event(event: dict[str, Any], body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    """ServiceMonitor and LeaderWorkerSet support follow their CRDs appearing and going."""
    controller: Controller = memo.controller
    controller.crds_changed(body.metadata.name, event["type"] != "DELETED" and crd_established(body))



@kopf.on.event(GROUP, VERSION, GATEWAY_PLURAL)
async def vllmgateway_event(**kwargs: Any) -> None:
    """No kopf timer (it would put a finalizer on every gateway): the reconciler's own loop
    passes each known gateway again every GATEWAY_PASS_SECONDS."""
    gateways: GatewayReconciler = kwargs["memo"].gateways
    body: kopf.Body = kwargs["body"]
    if kwargs["event"]["type"] == "DELETED":  # its children go with it (owner references)
        gateways.forget(body.metadata.namespace or "", body.metadata.name or "")
        return
    await gateways.observe(dict(body))
