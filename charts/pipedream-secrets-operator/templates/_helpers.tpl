{{- define "pdso.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "pdso.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "pdso.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{ include "pdso.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{- define "pdso.selectorLabels" -}}
app.kubernetes.io/name: {{ include "pdso.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "pdso.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "pdso.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "pdso.leaderElection" -}}
{{- /* Several replicas, or several shards (whose count change is guarded through the Leases), need it. */ -}}
{{- if or .Values.leaderElection.enabled (gt (int .Values.replicaCount) 1) (gt (int .Values.sharding.shards) 1) -}}true{{- else -}}false{{- end -}}
{{- end -}}

{{/* Rules every install needs on ConnectedAccounts, PipedreamConnections and Secrets. */}}
{{- define "pdso.namespacedRules" -}}
# Watched by the controllers (kube-rs watchers list and watch; nothing reads single objects).
- apiGroups: [pipedream-secrets.io]
  resources: [connectedaccounts, pipedreamconnections]
  verbs: [list, watch]
# Status is written by server-side apply.
- apiGroups: [pipedream-secrets.io]
  resources: [connectedaccounts/status, pipedreamconnections/status]
  verbs: [patch]
# patch: the cleanup finalizer of Retain objects is added and removed by a merge patch; get: whether another
# ConnectedAccount that owns a key of a Merge target still exists (asked of the API server: it may be another
# shard's).
- apiGroups: [pipedream-secrets.io]
  resources: [connectedaccounts]
  verbs: [get, patch]
# Written Secrets carry an ownerReference with blockOwnerDeletion; clusters enforcing
# OwnerReferencesPermissionEnforcement (OpenShift) require update on the owner's finalizers.
- apiGroups: [pipedream-secrets.io]
  resources: [connectedaccounts/finalizers]
  verbs: [update]
# get: the target Secret (ownership and drift check) and connection Secrets; list/watch: the metadata-only,
# label-selected watch of written Secrets; create/patch: server-side apply of the target (creating needs create).
- apiGroups: [""]
  resources: [secrets]
  verbs: [get, list, watch, create, patch]
# Events on transitions; repeats are patched into an event series.
- apiGroups: [events.k8s.io]
  resources: [events]
  verbs: [create, patch]
{{- if .Values.rolloutRestarts.enabled }}
# spec.rolloutRestartTargets: pod-template annotation patch.
- apiGroups: [apps]
  resources: [deployments, statefulsets, daemonsets]
  verbs: [patch]
{{- end }}
{{- end -}}

{{/* The metrics port's name: https-metrics when metrics.secure.enabled (so meshes that read the protocol from the
name pass TLS through), http-metrics otherwise. */}}
{{- define "pdso.metricsPortName" -}}
{{- if .Values.metrics.secure.enabled -}}https-metrics{{- else -}}http-metrics{{- end -}}
{{- end -}}

{{/* Where metrics.secure.certSecret is mounted. */}}
{{- define "pdso.metricsCertDir" -}}/var/run/pipedream-secrets-operator/metrics-tls{{- end -}}
