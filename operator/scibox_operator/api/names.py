"""One home for every name, label, annotation and literal the operator shares with the cluster."""

from __future__ import annotations

GROUP = "scibox.io"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
PLURAL = "vllmdeployments"
KIND = "VLLMDeployment"
FIELD_MANAGER = "scibox-vllm-operator"

# Labels on every child.
MANAGED_BY = FIELD_MANAGER
NAME_LABEL = "app.kubernetes.io/name"
INSTANCE_LABEL = "app.kubernetes.io/instance"
COMPONENT_LABEL = "app.kubernetes.io/component"
PART_OF_LABEL = "app.kubernetes.io/part-of"
MANAGED_BY_LABEL = "app.kubernetes.io/managed-by"
OWNER_NAME_LABEL = "scibox.io/vllmdeployment"
# Marks a cache claim and its download Job with the claim name (shared by every user of a model).
CACHE_LABEL = "scibox.io/model-cache"

# Components.
SERVER = "server"
CACHE = "model-cache"
DOWNLOAD = "model-download"

# Annotations.
RENDER_HASH_ANNOTATION = "scibox.io/render-hash"
# A digest of the API key in the pod template: a rotated key rolls the pods, which read the key
# from their environment only at start (the key itself never appears in any object).
API_KEY_DIGEST_ANNOTATION = "scibox.io/api-key-digest"
MODEL_ANNOTATION = "scibox.io/model"
REVISION_ANNOTATION = "scibox.io/revision"
# On a StorageClass: the access modes its volumes offer (ReadWriteMany lets one claim be shared).
RWX_ANNOTATION = "scibox.io/access-modes"

# Optional CRDs the operator follows.
SERVICE_MONITOR_CRD = "servicemonitors.monitoring.coreos.com"
LEADER_WORKER_SET_CRD = "leaderworkersets.leaderworkerset.x-k8s.io"
# KEDA's ScaledObject: when installed, autoscaling renders one instead of a plain HPA.
SCALED_OBJECT_CRD = "scaledobjects.keda.sh"
WATCHED_CRDS = (SERVICE_MONITOR_CRD, LEADER_WORKER_SET_CRD, SCALED_OBJECT_CRD)
LEADER_INDEX_LABEL = "leaderworkerset.sigs.k8s.io/worker-index"

# Autoscaling (render/autoscaling.py): the API versions and vLLM's own series it scales on.
KEDA_API_VERSION = "keda.sh/v1alpha1"
KEDA_PAUSED_SCALE_IN = "autoscaling.keda.sh/paused-scale-in"
HPA_API_VERSION = "autoscaling/v2"
METRIC_REQUESTS_WAITING = "vllm:num_requests_waiting"
METRIC_KV_CACHE_USAGE = "vllm:kv_cache_usage_perc"
METRIC_REQUESTS_FINISHED = "vllm:request_success_total"
# the operator's own per-object gauges (metrics.py), which the wake trigger reads
METRIC_DESIRED_REPLICAS = "scibox_operator_vllmdeployment_desired_replicas"
METRIC_READY_REPLICAS = "scibox_operator_vllmdeployment_ready_replicas"
