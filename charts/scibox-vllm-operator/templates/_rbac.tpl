{{/* The operator's RBAC rules, in two halves: a cluster-wide install puts both in its
ClusterRole; a namespaced install (watchNamespaces) puts the namespaced half in a Role in each
listed namespace. Each rule says which code sends the verbs. */}}

{{- define "scibox.namespacedRules" -}}
# VLLMDeployments: kopf lists and watches them (main.py); the operator writes only status
# (controller._write_status, a merge patch of /status).
- apiGroups: [scibox.io]
  resources: [vllmdeployments]
  verbs: [list, watch]
- apiGroups: [scibox.io]
  resources: [vllmdeployments/status]
  verbs: [patch]
# Children carry an owner reference with blockOwnerDeletion: where the
# OwnerReferencesPermissionEnforcement admission plugin is on (OpenShift, hardened clusters)
# setting it requires update on the owner's finalizers.
- apiGroups: [scibox.io]
  resources: [vllmdeployments/finalizers]
  verbs: [update]
# The children it renders: primed with one LIST, then watched by label; written by
# server-side apply, which the API server authorizes as patch, and as create when the object
# does not exist yet. get: before creating a child, an object of the same name that the watch
# cannot see (not labelled, someone else's) is looked up, so that it is never taken over.
- apiGroups: [""]
  resources: [services, persistentvolumeclaims]
  verbs: [get, list, watch, create, patch]
# The server workload is a Deployment, or a LeaderWorkerSet when one replica spans nodes; the
# other kind is deleted when the plan switches. Download Jobs are deleted when they failed and
# their inputs changed, or when their immutable template changed; ServiceMonitors when a
# model's monitoring is turned off.
- apiGroups: [apps]
  resources: [deployments]
  verbs: [get, list, watch, create, patch, delete]
# get: a multi-node object's group status is read from the API on every pass
# (controller._read_fresh), since kopf can miss a LeaderWorkerSet CRD installed after it started.
- apiGroups: [leaderworkerset.x-k8s.io]
  resources: [leaderworkersets]
  verbs: [get, list, watch, create, patch, delete]
# The links from a server pod to its workload (ownership.py): the prober sends the API key only
# to pods whose ReplicaSet or leader StatefulSet chains up to the VLLMDeployment. Read only.
- apiGroups: [apps]
  resources: [replicasets, statefulsets]
  verbs: [list, watch]
# A model's optional NetworkPolicy in front of its port, deleted when turned off.
- apiGroups: [networking.k8s.io]
  resources: [networkpolicies]
  verbs: [get, list, watch, create, patch, delete]
- apiGroups: [batch]
  resources: [jobs]
  verbs: [get, list, watch, create, patch, delete]
- apiGroups: [monitoring.coreos.com]
  resources: [servicemonitors]
  verbs: [get, list, watch, create, patch, delete]
# spec.autoscaling: a KEDA ScaledObject when KEDA is installed, else an HPA; deleted when the
# spec drops autoscaling or KEDA appears/goes. Both target the VLLMDeployment's scale
# subresource, which the autoscaler (not the operator) writes.
- apiGroups: [autoscaling]
  resources: [horizontalpodautoscalers]
  verbs: [get, list, watch, create, patch, delete]
- apiGroups: [keda.sh]
  resources: [scaledobjects]
  verbs: [get, list, watch, create, patch, delete]
# Read only: server pods (probe targets) and download pods (their reports). A VLLMGateway's
# router Role grants list/watch on pods too, which RBAC allows only because the operator holds
# them itself (it has no escalate or bind).
- apiGroups: [""]
  resources: [pods]
  verbs: [list, watch]
# VLLMGateways (reconcile/gateway.py): kopf lists and watches them; the operator writes status.
- apiGroups: [scibox.io]
  resources: [vllmgateways]
  verbs: [list, watch]
- apiGroups: [scibox.io]
  resources: [vllmgateways/status]
  verbs: [patch]
- apiGroups: [scibox.io]
  resources: [vllmgateways/finalizers]
  verbs: [update]
# A gateway's router account: a ServiceAccount, a Role allowing list/watch on pods of its
# namespace only, and the RoleBinding between them; read by name before a first apply (never
# taken over), server-side applied. Never deleted by the operator (owner references do that).
- apiGroups: [""]
  resources: [serviceaccounts]
  verbs: [get, create, patch]
- apiGroups: [rbac.authorization.k8s.io]
  resources: [roles, rolebindings]
  verbs: [get, create, patch]
# The model server's API key (for the probe) and the hub token, read by name from the
# Secrets a VLLMDeployment references; never listed or watched.
- apiGroups: [""]
  resources: [secrets]
  verbs: [get]
# A Kubernetes Event on every phase change of a VLLMDeployment.
- apiGroups: [""]
  resources: [events]
  verbs: [create]
{{- end }}

{{- define "scibox.clusterScopedRules" -}}
# Read only, cluster-scoped: nodes (GPU inventory for planning), storage classes (can the cache
# be shared?).
- apiGroups: [""]
  resources: [nodes]
  verbs: [list, watch]
- apiGroups: [storage.k8s.io]
  resources: [storageclasses]
  verbs: [list, watch]
# kopf scans and watches CRDs to know which resources exist; the operator watches the
# ServiceMonitor and LeaderWorkerSet CRDs and reads them once at start.
- apiGroups: [apiextensions.k8s.io]
  resources: [customresourcedefinitions]
  verbs: [get, list, watch]
{{- end }}
