"""Pinned versions of everything the local cluster builds from the Go module proxy.

Bumping a version here changes the cache key, so the next `build` compiles it anew.
"""

KUBERNETES = "v1.35.4"
# The staging modules (k8s.io/api, client-go, ...) are published as v0.<minor>.<patch>.
KUBERNETES_STAGING = "v0" + KUBERNETES[2:]
ETCD = "v3.6.16"
KWOK = "v0.8.0"
HELM = "v3.19.5"
PROMETHEUS_OPERATOR = "v0.85.0"
# LeaderWorkerSet (multi-node serving groups): the controller-manager and its CRD.
LWS = "v0.7.0"
# The GitHub Actions workflow linter the release tests run on .github/workflows/.
ACTIONLINT = "v1.7.12"
# KEDA (event-driven autoscaling): its operator and metrics adapter (the custom/external metrics
# APIService) for the autoscaling tests. prometheus-adapter is refused by the Go module proxy.
KEDA = "v2.21.0"
