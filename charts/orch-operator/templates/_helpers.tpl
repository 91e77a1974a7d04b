{{/* Chart name, truncated to 63 characters (DNS label). */}}
{{- define "orch-operator.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Full name: release-chart, unless the release name already contains the chart name. */}}
{{- define "orch-operator.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "orch-operator.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "orch-operator.selectorLabels" -}}
app.kubernetes.io/name: {{ include "orch-operator.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "orch-operator.labels" -}}
helm.sh/chart: {{ include "orch-operator.chart" . }}
{{ include "orch-operator.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/component: operator
app.kubernetes.io/part-of: orch
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "orch-operator.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "orch-operator.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "orch-operator.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}
{{- end }}

{{- define "orch-operator.workerImage" -}}
{{- if .Values.worker.image.digest }}
{{- printf "%s@%s" .Values.worker.image.repository .Values.worker.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.worker.image.repository (default .Chart.AppVersion .Values.worker.image.tag) }}
{{- end }}
{{- end }}

{{/* The RBAC rules of the controllers; used by the ClusterRole or by the namespaced Role. */}}
{{- define "orch-operator.controllerRules" -}}
# OrchJob: watched and reconciled; the finalizer is added/removed by patch.
- apiGroups: ["orch.dev"]
  resources: ["orchjobs"]
  verbs: ["get", "list", "watch", "patch"]
# TaskGroup: one per submission, written with server-side apply (create + patch); deleted by
# the garbage collector with its OrchJob (owner reference), never by the operator.
- apiGroups: ["orch.dev"]
  resources: ["taskgroups"]
  verbs: ["get", "list", "watch", "create", "patch"]
# RateLimit: watched to keep each bucket at its rate and burst; read by name for the jobs
# that name one.
- apiGroups: ["orch.dev"]
  resources: ["ratelimits"]
  verbs: ["get", "list", "watch"]
# Status subresources: counts and conditions only.
- apiGroups: ["orch.dev"]
  resources: ["orchjobs/status", "taskgroups/status", "ratelimits/status"]
  verbs: ["patch"]
# Owner references with blockOwnerDeletion on objects owned by OrchJobs (TaskGroups, Jobs)
# (OwnerReferencesPermissionEnforcement admission).
- apiGroups: ["orch.dev"]
  resources: ["orchjobs/finalizers"]
  verbs: ["update"]
# Events about the resources (kube-rs Recorder, events.k8s.io/v1).
- apiGroups: ["events.k8s.io"]
  resources: ["events"]
  verbs: ["create", "patch"]
{{- if .Values.rbac.kubernetesExecutor }}
# Kubernetes executor: one Indexed Job per run of tasks; listed to poll, patched to
# suspend/resume, deleted to cancel.
- apiGroups: ["batch"]
  resources: ["jobs"]
  verbs: ["create", "list", "patch", "delete"]
# Their pods: listed to poll; deleted to cancel single indexes.
- apiGroups: [""]
  resources: ["pods"]
  verbs: ["list", "delete"]
{{- end }}
{{- end }}
