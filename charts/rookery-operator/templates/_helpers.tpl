{{/*
The chart name, or nameOverride.
*/}}
{{- define "rookery-operator.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
The prefix of every object name: fullnameOverride, else the release name (plus the chart name
when the release name does not already contain it). 63 characters at most (DNS label).
*/}}
{{- define "rookery-operator.fullname" -}}
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

{{/*
chart-version for the helm.sh/chart label.
*/}}
{{- define "rookery-operator.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Labels of every object.
*/}}
{{- define "rookery-operator.labels" -}}
helm.sh/chart: {{ include "rookery-operator.chart" . }}
{{ include "rookery-operator.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: rookery
{{- end }}

{{/*
Labels that select the operator's pods (Deployment selector, Service selector).
*/}}
{{- define "rookery-operator.selectorLabels" -}}
app.kubernetes.io/name: {{ include "rookery-operator.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end }}

{{/*
The ServiceAccount the operator runs as.
*/}}
{{- define "rookery-operator.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "rookery-operator.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/*
The operator image: repository:tag, the tag defaulting to the chart's appVersion.
*/}}
{{- define "rookery-operator.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag | toString) }}
{{- end }}

{{/*
The RBAC rules of the operator's work on MqttClusters and the objects it owns, shared by the
ClusterRole (all namespaces) and the Role (watchNamespace). Least privilege: no wildcard, no
pods/exec or pods/proxy (drain goes to the brokers' admin API over the network).
*/}}
{{- define "rookery-operator.rules" -}}
# The MqttClusters: read, add/remove the cleanup finalizer, write status.
- apiGroups: ["rookery.dev"]
  resources: ["mqttclusters"]
  verbs: ["get", "list", "watch", "patch", "update"]
- apiGroups: ["rookery.dev"]
  resources: ["mqttclusters/status"]
  verbs: ["get", "patch", "update"]
- apiGroups: ["rookery.dev"]
  resources: ["mqttclusters/finalizers"]
  verbs: ["update"]
# The brokers' StatefulSet, the HAProxy and managed Redis/PostgreSQL workloads.
- apiGroups: ["apps"]
  resources: ["statefulsets", "deployments"]
  verbs: ["get", "list", "watch", "create", "patch", "update", "delete"]
# Services, broker configuration, generated credentials and TLS material.
- apiGroups: [""]
  resources: ["services", "configmaps", "secrets"]
  verbs: ["get", "list", "watch", "create", "patch", "update", "delete"]
# Pods: whether a leaving broker ever started; delete restarts a broker drained for a
# scale-down that was undone. (Volumes are the StatefulSet's: the operator never touches them.)
- apiGroups: [""]
  resources: ["pods"]
  verbs: ["get", "list", "watch", "delete"]
- apiGroups: [""]
  resources: ["events"]
  verbs: ["create", "patch"]
- apiGroups: ["events.k8s.io"]
  resources: ["events"]
  verbs: ["create", "patch"]
- apiGroups: ["policy"]
  resources: ["poddisruptionbudgets"]
  verbs: ["get", "list", "watch", "create", "patch", "update", "delete"]
- apiGroups: ["networking.k8s.io"]
  resources: ["networkpolicies"]
  verbs: ["get", "list", "watch", "create", "patch", "update", "delete"]
# Optional integrations, used only when their CRDs exist.
- apiGroups: ["monitoring.coreos.com"]
  resources: ["servicemonitors"]
  verbs: ["get", "list", "watch", "create", "patch", "update", "delete"]
- apiGroups: ["cert-manager.io"]
  resources: ["certificates"]
  verbs: ["get", "list", "watch", "create", "patch", "update", "delete"]
- apiGroups: ["postgresql.cnpg.io"]
  resources: ["clusters"]
  verbs: ["get", "list", "watch", "create", "patch", "update", "delete"]
{{- end }}

{{/*
Cluster-scoped read of CRDs: which optional integrations (monitoring.coreos.com,
cert-manager.io, postgresql.cnpg.io) are installed.
*/}}
{{- define "rookery-operator.crdRules" -}}
- apiGroups: ["apiextensions.k8s.io"]
  resources: ["customresourcedefinitions"]
  verbs: ["get", "list", "watch"]
{{- end }}
