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

# The VLLMGateway: one OpenAI endpoint for many VLLMDeployments, on vLLM's own router.
GATEWAY_KIND = "VLLMGateway"
GATEWAY_PLURAL = "vllmgateways"
ROUTER = "router"  # component label of the router's children
OWNER_GATEWAY_LABEL = "scibox.io/vllmgateway"
# vllm-router's --policy values a VLLMGateway may choose (the CRD's enum says the same).
ROUTER_POLICIES = ("cache_aware", "power_of_two", "consistent_hash", "round_robin", "random")
# Label keys the operator sets itself: server pods never take them from a VLLMDeployment's labels.
OPERATOR_LABEL_PREFIXES = ("app.kubernetes.io/", "scibox.io/")

# LoRA adapters: an adapter's download Job carries the adapter's name (spec.adapters[].name).
ADAPTER_LABEL = "scibox.io/lora-adapter"
ADAPTER_SOURCE_ANNOTATION = "scibox.io/adapter-source"

# vLLM's compile and kernel caches (VLLM_CACHE_ROOT) live on the model's cache claim, one folder
# per compile key (render/compile_cache.py), mounted writable at this path in the server pods.
COMPILE_CACHE_SUBDIR = ".scibox-compile"
COMPILE_CACHE_MOUNT = "/var/cache/scibox-vllm"
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

# Safe rollouts (reconcile/rollout.py), on the workload (Deployment / LeaderWorkerSet) the
# VLLMDeployment owns, so they survive operator restarts. JSON values.
# The rollout under way or last finished: target template digest, strategy, cause, start time.
ROLLOUT_ANNOTATION = "scibox.io/rollout"
# The last pod template that served (digest and body): what a failed rollout returns to.
LAST_GOOD_TEMPLATE_ANNOTATION = "scibox.io/last-good-template"
# A template that could not become ready (digest, generation, reason): not retried until the
# spec renders another one.
FAILED_TEMPLATE_ANNOTATION = "scibox.io/failed-template"
