{{/*
Helpers of the Switchyard chart, all named `switchyard.*`.

Names are cut to 63 characters because Kubernetes object names that become DNS labels (Services,
and the pods' hostnames) may hold at most 63 characters (RFC 1123); longer names are rejected by
the API server. Suffixed names cut the base first so that the suffix survives.
*/}}

{{- define "switchyard.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* `<release>-switchyard`, or the release name when it already contains the chart name. */}}
{{- define "switchyard.fullname" -}}
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

{{/* `<fullname>-<suffix>` within 63 characters: the full name is cut, never the suffix.
Call with (list $ "suffix"). */}}
{{- define "switchyard.suffixed" -}}
{{- $root := index . 0 }}
{{- $suffix := index . 1 }}
{{- $base := include "switchyard.fullname" $root | trunc (int (sub 62 (len $suffix))) | trimSuffix "-" }}
{{- printf "%s-%s" $base $suffix }}
{{- end }}

{{/*
The RayService's name. KubeRay names the RayCluster `<name>-<5 characters>`, its pods
`<cluster>-<group>-worker-<5 characters>` and its Services `<name>-head-svc`, so the name is cut
to 40 characters to leave room for those suffixes.
*/}}
{{- define "switchyard.rayServiceName" -}}
{{- include "switchyard.fullname" . | trunc 40 | trimSuffix "-" }}
{{- end }}

{{- define "switchyard.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "switchyard.selectorLabels" -}}
app.kubernetes.io/name: {{ include "switchyard.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "switchyard.labels" -}}
helm.sh/chart: {{ include "switchyard.chart" . }}
{{ include "switchyard.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{/* Labels of one component's pods (selector labels plus `app.kubernetes.io/component`). */}}
{{- define "switchyard.componentSelectorLabels" -}}
{{- $root := index . 0 }}
{{- include "switchyard.selectorLabels" $root }}
app.kubernetes.io/component: {{ index . 1 }}
{{- end }}

{{- define "switchyard.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{- define "switchyard.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "switchyard.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "switchyard.gatewayServiceName" -}}
{{- include "switchyard.suffixed" (list . "gateway") }}
{{- end }}

{{- define "switchyard.deploymentName" -}}
{{- default (include "switchyard.fullname" .) .Values.serve.deploymentName }}
{{- end }}

{{/* ---------------------------------------------------------------- Redis */}}

{{/* `HOST:PORT` of the Redis that holds both Switchyard's state and Ray's GCS tables. */}}
{{- define "switchyard.redis.address" -}}
{{- if eq .Values.redis.mode "external" }}
{{- required "redis.external.address (HOST:PORT) is required with redis.mode=external" .Values.redis.external.address }}
{{- else }}
{{- printf "%s:6379" (include "switchyard.suffixed" (list . "redis")) }}
{{- end }}
{{- end }}

{{/* The Secret with the Redis password; empty when the external Redis has none. */}}
{{- define "switchyard.redis.secretName" -}}
{{- if eq .Values.redis.mode "external" }}
{{- .Values.redis.external.existingSecret }}
{{- else }}
{{- default (include "switchyard.suffixed" (list . "redis")) .Values.redis.bundled.existingSecret }}
{{- end }}
{{- end }}

{{/*
Environment of every Switchyard process: the Redis password from its Secret, then the state store URL
built from it with Kubernetes' `$(VAR)` expansion, so that no password lands in the RayService spec
or the Serve config. The password must be URL-safe (the chart's generated one is alphanumeric).
*/}}
{{- define "switchyard.redis.env" -}}
{{- $secret := include "switchyard.redis.secretName" . }}
{{- if $secret }}
- name: SWITCHYARD_REDIS_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ $secret }}
      key: {{ .Values.redis.passwordKey }}
- name: SWITCHYARD_REDIS_URL
  value: {{ printf "redis://:$(SWITCHYARD_REDIS_PASSWORD)@%s/%d" (include "switchyard.redis.address" .) (int .Values.redis.database) | quote }}
{{- else }}
- name: SWITCHYARD_REDIS_URL
  value: {{ printf "redis://%s/%d" (include "switchyard.redis.address" .) (int .Values.redis.database) | quote }}
{{- end }}
{{- end }}

{{/* ---------------------------------------------------------------- auth and TLS */}}

{{- define "switchyard.auth.secretName" -}}
{{- default (include "switchyard.suffixed" (list . "auth")) .Values.auth.existingSecret }}
{{- end }}

{{- define "switchyard.tls.secretName" -}}
{{- required "tls.secretName (a kubernetes.io/tls Secret) is required with tls.enabled=true" .Values.tls.secretName }}
{{- end }}

{{/* The port the kubelet's gRPC probes query: the plaintext health port when TLS is on. */}}
{{- define "switchyard.probePort" -}}
{{- if .Values.tls.enabled }}{{ .Values.gateway.healthPort }}{{ else }}{{ .Values.gateway.grpcPort }}{{ end }}
{{- end }}

{{/* ---------------------------------------------------------------- topology */}}

{{/* Switchyard nodes: the GPU pods of every worker group. */}}
{{- define "switchyard.topology.nodes" -}}
{{- $nodes := 0 }}
{{- range .Values.workerGroups }}
{{- $nodes = add $nodes (int .replicas) }}
{{- end }}
{{- $nodes }}
{{- end }}

{{/* GPUs (expert workers) per node; every worker group must give its pods the same number. */}}
{{- define "switchyard.topology.gpusPerNode" -}}
{{- $first := int (index .Values.workerGroups 0).gpusPerPod }}
{{- range .Values.workerGroups }}
{{- if ne (int .gpusPerPod) $first }}
{{- fail (printf "workerGroups: every group needs the same gpusPerPod (a placement topology is nodes x GPUs per node); group %q has %d, group %q has %d" (index $.Values.workerGroups 0).name $first .name (int .gpusPerPod)) }}
{{- end }}
{{- end }}
{{- $first }}
{{- end }}

{{/* ---------------------------------------------------------------- Serve */}}

{{/* The Serve application's arguments (docs/kubernetes.md, "The Serve application contract"). */}}
{{- define "switchyard.serve.args" -}}
{{- $args := dict
  "model" .Values.model.path
  "nodes" (int (include "switchyard.topology.nodes" .))
  "gpus_per_node" (int (include "switchyard.topology.gpusPerNode" .))
  "engines_per_node" (int .Values.serve.enginesPerNode)
  "gateways" (int .Values.gateway.replicas)
  "deployment" (include "switchyard.deploymentName" .)
  "redis_url_env" "SWITCHYARD_REDIS_URL"
  "grpc_port" (int .Values.gateway.grpcPort)
  "metrics_port" (int .Values.gateway.metricsPort)
  "stats_interval_s" .Values.serve.statsIntervalSeconds
  "cluster" .Values.serve.planning.cluster
  "stats_window_s" .Values.serve.planning.windowSeconds
  "stats_history" (int .Values.serve.planning.history)
  "stats_decay" .Values.serve.planning.decay
  "adaptive_memory" .Values.serve.planning.adaptiveMemory
  "balance_feedback" .Values.serve.planning.balanceFeedback
}}
{{- with .Values.serve.planning.balanceTokens }}
{{- $_ := set $args "balance_tokens" (int .) }}
{{- end }}
{{- with .Values.serve.planning.resampledWindows }}
{{- $_ := required "serve.planning.balanceTokens is required with serve.planning.resampledWindows: the windows are drawn from its runs" $.Values.serve.planning.balanceTokens }}
{{- $_ := set $args "resampled_windows" (int .) }}
{{- end }}
{{- if .Values.serve.plan }}
{{- $_ := set $args "plan" "/etc/switchyard/plan/plan.json" }}
{{- end }}
{{- if .Values.auth.enabled }}
{{- $_ := set $args "token_file" "/etc/switchyard/auth/token" }}
{{- $_ := set $args "admin_token_file" "/etc/switchyard/auth/admin-token" }}
{{- end }}
{{- if .Values.tls.enabled }}
{{- $_ := set $args "tls_cert_file" "/etc/switchyard/tls/tls.crt" }}
{{- $_ := set $args "tls_key_file" "/etc/switchyard/tls/tls.key" }}
{{- $_ := set $args "health_port" (int .Values.gateway.healthPort) }}
{{- end }}
{{- toYaml (merge (deepCopy .Values.serve.extraArgs) $args) }}
{{- end }}

{{/* serveConfigV2: one application; Serve's own HTTP proxy stays on its default port (KubeRay's
probes and serve Service use it), the gRPC front door is the application's Gateway deployment. */}}
{{- define "switchyard.serveConfig" -}}
proxy_location: EveryNode
http_options:
  host: 0.0.0.0
  port: 8000
applications:
  - name: {{ .Values.serve.applicationName }}
    import_path: {{ .Values.serve.importPath }}
    route_prefix: /{{ .Values.serve.applicationName }}
    args:
      {{- include "switchyard.serve.args" . | nindent 6 }}
{{- end }}

{{/* ---------------------------------------------------------------- Ray pods */}}

{{/* Volumes of every Ray pod: the model, /dev/shm, and the plan, auth and TLS files when set.
Call with (list $ shmSize). */}}
{{- define "switchyard.ray.volumes" -}}
{{- $root := index . 0 }}
{{- $shm := index . 1 }}
{{- with $root }}
- name: model
{{- if eq .Values.model.source "pvc" }}
  persistentVolumeClaim:
    claimName: {{ required "model.pvc.claimName is required with model.source=pvc" .Values.model.pvc.claimName }}
    readOnly: true
{{- else }}
  emptyDir:
    sizeLimit: {{ .Values.model.init.sizeLimit }}
{{- end }}
- name: dshm
  emptyDir:
    medium: Memory
{{- with $shm }}
    sizeLimit: {{ . }}
{{- end }}
{{- if .Values.serve.plan }}
- name: plan
  configMap:
    name: {{ include "switchyard.suffixed" (list . "plan") }}
{{- end }}
{{- if .Values.auth.enabled }}
- name: auth
  secret:
    secretName: {{ include "switchyard.auth.secretName" . }}
    defaultMode: 0400
{{- end }}
{{- if .Values.tls.enabled }}
- name: tls
  secret:
    secretName: {{ include "switchyard.tls.secretName" . }}
    defaultMode: 0400
{{- end }}
{{- end }}
{{- end }}

{{- define "switchyard.ray.volumeMounts" -}}
- name: model
  mountPath: {{ dir .Values.model.path }}
{{- if eq .Values.model.source "pvc" }}
  readOnly: true
{{- with .Values.model.pvc.subPath }}
  subPath: {{ . }}
{{- end }}
{{- end }}
- name: dshm
  mountPath: /dev/shm
{{- if .Values.serve.plan }}
- name: plan
  mountPath: /etc/switchyard/plan
  readOnly: true
{{- end }}
{{- if .Values.auth.enabled }}
- name: auth
  mountPath: /etc/switchyard/auth
  readOnly: true
{{- end }}
{{- if .Values.tls.enabled }}
- name: tls
  mountPath: /etc/switchyard/tls
  readOnly: true
{{- end }}
{{- end }}

{{/* The init container that fills the model emptyDir (model.source=init). */}}
{{- define "switchyard.ray.initContainers" -}}
{{- if eq .Values.model.source "init" }}
{{- if not .Values.model.init.command }}
{{- fail "model.init.command is required with model.source=init: a command that leaves the checkpoint at model.path" }}
{{- end }}
initContainers:
  - name: model
    image: {{ default (include "switchyard.image" .) .Values.model.init.image }}
    imagePullPolicy: {{ .Values.image.pullPolicy }}
    command:
      {{- toYaml .Values.model.init.command | nindent 6 }}
    volumeMounts:
      - name: model
        mountPath: {{ dir .Values.model.path }}
{{- end }}
{{- end }}

{{- define "switchyard.ray.env" -}}
{{ include "switchyard.redis.env" . }}
- {name: RAY_task_events_max_num_task_in_gcs, value: {{ .Values.ray.taskEventsMaxInGcs | quote }}}
{{- with .Values.ray.extraEnv }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* Pod metadata of a Ray group. Call with (list $ component extraLabels). */}}
{{- define "switchyard.ray.podMetadata" -}}
{{- $root := index . 0 }}
metadata:
  labels:
    {{- include "switchyard.componentSelectorLabels" (list $root (index . 1)) | nindent 4 }}
    {{- with $root.Values.podLabels }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
    {{- with index . 2 }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
  {{- with $root.Values.podAnnotations }}
  annotations:
    {{- toYaml . | nindent 4 }}
  {{- end }}
{{- end }}

{{/* Scheduling of a pod: nodeSelector, tolerations and affinity, each only when set. */}}
{{- define "switchyard.scheduling" -}}
{{- with .nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .affinity }}
affinity:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end }}

{{/* `ray start` parameters shared by every group. */}}
{{- define "switchyard.ray.startParams" -}}
metrics-export-port: {{ .Values.ray.metricsExportPort | quote }}
{{- range $key, $value := .Values.ray.extraRayStartParams }}
{{ $key }}: {{ $value | quote }}
{{- end }}
{{- end }}
