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

{{- /* Egress of the operator's pods and of the chart's test pod: DNS, the API server, Pipedream (or the proxy). */}}
{{- define "pdso.egressRules" -}}
# DNS, to the cluster's resolver only.
- {{- with .Values.networkPolicy.dns.to }}
  to:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  ports:
    - port: 53
      protocol: UDP
    - port: 53
      protocol: TCP
# The Kubernetes API server. As wide as apiServer.cidrs: by default every address on 443 and 6443, in-cluster
# services included; name your API server's addresses there to close that.
- to:
    {{- range .Values.networkPolicy.apiServer.cidrs }}
    - ipBlock:
        cidr: {{ . | quote }}
    {{- end }}
  ports:
    {{- /* `port` is the older single-port form; when set it wins. */}}
    {{- range (ternary (list .Values.networkPolicy.apiServer.port) .Values.networkPolicy.apiServer.ports (not (empty .Values.networkPolicy.apiServer.port))) }}
    - port: {{ . }}
      protocol: TCP
    {{- end }}
{{- if and .Values.egressProxy.url .Values.egressProxy.cidrs }}
# Pipedream through the egress proxy only.
- to:
    {{- range .Values.egressProxy.cidrs }}
    - ipBlock:
        cidr: {{ . | quote }}
    {{- end }}
  ports:
    - port: {{ .Values.egressProxy.port }}
      protocol: TCP
{{- else }}
# Pipedream: any address of either family except `pipedream.except` (the cluster's own ranges), so a tenant's
# apiUrl cannot reach in-cluster HTTPS services through this rule. An except must lie inside its cidr, so the
# whole-family cidrs get the entries of their family and narrower cidrs (yours) none.
- to:
    {{- range $cidr := .Values.networkPolicy.pipedream.cidrs }}
    {{- $v6 := contains ":" $cidr }}
    {{- $except := list }}
    {{- if or (eq $cidr "0.0.0.0/0") (eq $cidr "::/0") }}
    {{- range $.Values.networkPolicy.pipedream.except }}
    {{- if eq (contains ":" .) $v6 }}
    {{- $except = append $except . }}
    {{- end }}
    {{- end }}
    {{- end }}
    - ipBlock:
        cidr: {{ $cidr | quote }}
        {{- with $except }}
        except:
          {{- range . }}
          - {{ . | quote }}
          {{- end }}
        {{- end }}
    {{- end }}
  ports:
    - port: {{ .Values.networkPolicy.pipedream.port }}
      protocol: TCP
{{- end }}
{{- end -}}

{{- /* The operator's image reference (the Deployment, the uninstall Job and the test pod run the same one). */}}
{{- define "pdso.image" -}}
{{- if .Values.image.digest -}}
{{ .Values.image.repository }}@{{ .Values.image.digest }}
{{- else -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end -}}
{{- end -}}

{{- /* Pipedream through the egress proxy (env entries; the API server is reached directly from a pod). */}}
{{- define "pdso.proxyEnv" -}}
{{- with .Values.egressProxy.url }}
- name: HTTPS_PROXY
  value: {{ . | quote }}
- name: HTTP_PROXY
  value: {{ . | quote }}
{{- end }}
{{- with .Values.egressProxy.noProxy }}
- name: NO_PROXY
  value: {{ . | quote }}
{{- end }}
{{- end -}}
