{{/* Chart name, 63 characters at most. */}}
{{- define "fleet.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Full name prefix of every object. Pool Deployments append "-<pool>", so keep room. */}}
{{- define "fleet.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 40 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 40 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 40 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "fleet.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Selector labels shared by every component; add app.kubernetes.io/component. */}}
{{- define "fleet.selectorLabels" -}}
app.kubernetes.io/name: {{ include "fleet.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "fleet.labels" -}}
helm.sh/chart: {{ include "fleet.chart" . }}
{{ include "fleet.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: fleet
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* The image reference: digest wins over tag; tag defaults to appVersion. */}}
{{- define "fleet.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}
{{- end }}

{{- define "fleet.secretName" -}}
{{- default (printf "%s-urls" (include "fleet.fullname" .)) .Values.broker.existingSecret }}
{{- end }}

{{- define "fleet.workerServiceAccount" -}}
{{- printf "%s-worker" (include "fleet.fullname" .) }}
{{- end }}

{{- define "fleet.autoscalerName" -}}
{{- printf "%s-autoscaler" (include "fleet.fullname" .) }}
{{- end }}

{{/* Name of a pool's Deployment: (dict "root" $ "pool" $pool). */}}
{{- define "fleet.poolName" -}}
{{- printf "%s-%s" (include "fleet.fullname" .root) .pool.name }}
{{- end }}

{{/* Pod security context shared by every pod. */}}
{{- define "fleet.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: {{ .Values.securityContext.runAsUser }}
runAsGroup: {{ .Values.securityContext.runAsGroup }}
fsGroup: {{ .Values.securityContext.fsGroup }}
seccompProfile:
  type: RuntimeDefault
{{- end }}

{{/* Container security context shared by every container. */}}
{{- define "fleet.containerSecurityContext" -}}
runAsNonRoot: true
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
privileged: false
capabilities:
  drop: ["ALL"]
seccompProfile:
  type: RuntimeDefault
{{- end }}

{{/* Broker and result-backend URLs from the Secret. */}}
{{- define "fleet.urlEnv" -}}
- name: FLEET_BROKER
  valueFrom:
    secretKeyRef:
      name: {{ include "fleet.secretName" . }}
      key: {{ .Values.broker.urlKey }}
- name: FLEET_RESULT_BACKEND
  valueFrom:
    secretKeyRef:
      name: {{ include "fleet.secretName" . }}
      key: {{ .Values.broker.resultBackendUrlKey }}
      optional: true
{{- if .Values.broker.tls.enabled }}
- name: SSL_CERT_FILE
  value: /etc/fleet/tls/{{ .Values.broker.tls.caKey }}
{{- end }}
{{- end }}

{{/* Flags: the mounted ConfigMap directory, and the Redis store when enabled. */}}
{{- define "fleet.flagsEnv" -}}
- name: FLEET_FLAGS_FILE
  value: /etc/fleet/flags
{{- if .Values.flags.redis.enabled }}
- name: FLEET_FLAGS_REDIS
  valueFrom:
    secretKeyRef:
      name: {{ include "fleet.secretName" . }}
      key: {{ default .Values.broker.resultBackendUrlKey .Values.flags.redis.urlKey }}
{{- end }}
{{- end }}

{{- define "fleet.tlsVolume" -}}
{{- if .Values.broker.tls.enabled }}
- name: broker-ca
  secret:
    secretName: {{ required "broker.tls.caSecret is required when broker.tls.enabled" .Values.broker.tls.caSecret }}
    items:
      - key: {{ .Values.broker.tls.caKey }}
        path: {{ .Values.broker.tls.caKey }}
{{- end }}
{{- end }}

{{- define "fleet.tlsVolumeMount" -}}
{{- if .Values.broker.tls.enabled }}
- name: broker-ca
  mountPath: /etc/fleet/tls
  readOnly: true
{{- end }}
{{- end }}

{{/*
Longest task time limit of a pool in seconds: the pool's (or worker's) taskTimeLimitSeconds, or
the largest time_limit in worker.taskConfig.tasks when that is larger. Argument: (dict "root" $
"pool" $pool).
*/}}
{{- define "fleet.taskTimeLimit" -}}
{{- $limit := int (ternary .pool.taskTimeLimitSeconds .root.Values.worker.taskTimeLimitSeconds (hasKey .pool "taskTimeLimitSeconds")) }}
{{- range $name, $task := (default dict .root.Values.worker.taskConfig.tasks) }}
{{- if and (kindIs "map" $task) (hasKey $task "time_limit") }}
{{- $tl := int (ceil (float64 (get $task "time_limit"))) }}
{{- if gt $tl $limit }}{{ $limit = $tl }}{{ end }}
{{- end }}
{{- end }}
{{- $limit }}
{{- end }}

{{/*
terminationGracePeriodSeconds of a pool: the preStop budget + the longest task time limit + the
worker's shutdown timeout + 5 s for handing back messages and exiting.
*/}}
{{- define "fleet.gracePeriod" -}}
{{- $pre := 0 }}
{{- if ne .root.Values.worker.preStop.mode "none" }}{{ $pre = int .root.Values.worker.preStop.sleepSeconds }}{{ end }}
{{- $shutdown := int (ternary .pool.shutdownTimeoutSeconds .root.Values.worker.shutdownTimeoutSeconds (hasKey .pool "shutdownTimeoutSeconds")) }}
{{- add $pre (include "fleet.taskTimeLimit" .) $shutdown 5 }}
{{- end }}

{{/* NetworkPolicy egress rules shared by workers and the autoscaler: DNS, brokers, OTLP. */}}
{{- define "fleet.egressCommon" -}}
{{- $np := .Values.networkPolicy -}}
- ports:
    - port: 53
      protocol: UDP
    - port: 53
      protocol: TCP
- ports:
    {{- range $np.brokerPorts }}
    - port: {{ . }}
      protocol: TCP
    {{- end }}
  {{- with $np.brokerPeers }}
  to:
    {{- toYaml . | nindent 4 }}
  {{- end }}
{{- if .Values.telemetry.otlpEndpoint }}
- ports:
    {{- range $np.otlpPorts }}
    - port: {{ . }}
      protocol: TCP
    {{- end }}
  {{- with $np.otlpPeers }}
  to:
    {{- toYaml . | nindent 4 }}
  {{- end }}
{{- end }}
{{- end }}
