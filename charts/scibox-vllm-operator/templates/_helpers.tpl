{{/* Names and labels shared by every template. */}}

{{/* Fixed, not overridable: the NetworkPolicy the operator puts in front of each model
selects the operator's pods by app.kubernetes.io/name=scibox-vllm-operator. */}}
{{- define "scibox.name" -}}
{{- .Chart.Name }}
{{- end }}

{{- define "scibox.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := .Chart.Name }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "scibox.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "scibox.selectorLabels" -}}
app.kubernetes.io/name: {{ include "scibox.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end }}

{{- define "scibox.labels" -}}
helm.sh/chart: {{ include "scibox.chart" . }}
{{ include "scibox.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: scibox
{{- end }}

{{- define "scibox.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "scibox.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* Cluster-scoped objects carry the namespace too: two releases of the same name in two
namespaces must not fight over one ClusterRole. */}}
{{- define "scibox.clusterScopedName" -}}
{{- printf "%s-%s" .Release.Namespace (include "scibox.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "scibox.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}
{{- end }}

{{/* Leader election is on when asked for, and always with more than one replica: two
replicas acting at once would both write every child and every status. */}}
{{- define "scibox.leaderElection" -}}
{{- if or .Values.leaderElection.enabled (gt (int .Values.replicaCount) 1) }}true{{ end }}
{{- end }}

{{/* The operator's Lease name is fixed in its code (scibox_operator/leader.py). */}}
{{- define "scibox.leaseName" -}}scibox-vllm-operator{{- end }}
