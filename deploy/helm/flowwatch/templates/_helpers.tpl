{{/* Names ------------------------------------------------------------------------------------ */}}

{{- define "flowwatch.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Full name prefix. Kept to 40 characters so "<fullname>-<component>" stays short enough for a
StatefulSet (its pods get a controller-revision-hash label of name + 11 characters, max 63).
*/}}
{{- define "flowwatch.fullname" -}}
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

{{- define "flowwatch.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* The components, in pipeline order. */}}
{{- define "flowwatch.components" -}}
ingest detector forecaster alerts history console simulator
{{- end }}

{{/* Components that consume Kafka topics in a consumer group: their replicas are capped by partitions. */}}
{{- define "flowwatch.consumers" -}}
ingest detector forecaster alerts history
{{- end }}

{{/* "<fullname>-<component>"; call with (dict "root" $ "name" $name). */}}
{{- define "flowwatch.componentName" -}}
{{- printf "%s-%s" (include "flowwatch.fullname" .root) .name | trunc 52 | trimSuffix "-" }}
{{- end }}

{{/* Labels ----------------------------------------------------------------------------------- */}}

{{- define "flowwatch.selectorLabels" -}}
app.kubernetes.io/name: {{ include "flowwatch.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "flowwatch.labels" -}}
helm.sh/chart: {{ include "flowwatch.chart" . }}
{{ include "flowwatch.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: flowwatch
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* Call with (dict "root" $ "name" $name). */}}
{{- define "flowwatch.componentSelectorLabels" -}}
{{ include "flowwatch.selectorLabels" .root }}
app.kubernetes.io/component: {{ .name }}
{{- end }}

{{- define "flowwatch.componentLabels" -}}
{{ include "flowwatch.labels" .root }}
app.kubernetes.io/component: {{ .name }}
{{- end }}

{{/* Image, accounts, secrets -------------------------------------------------------------------- */}}

{{- define "flowwatch.image" -}}
{{- $tag := default .Chart.AppVersion .Values.image.tag }}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository $tag }}
{{- end }}
{{- end }}

{{- define "flowwatch.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "flowwatch.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "flowwatch.secretName" -}}
{{- if .Values.secrets.existingSecret }}
{{- .Values.secrets.existingSecret }}
{{- else }}
{{- include "flowwatch.fullname" . }}
{{- end }}
{{- end }}

{{/* Whether the services read a Secret at all. */}}
{{- define "flowwatch.hasSecret" -}}
{{- if or .Values.secrets.existingSecret .Values.secrets.create }}true{{ end }}
{{- end }}

{{/*
The secret settings of one component only, as YAML (name: value); empty when it has none. Ingest's
device token is generated when not given (and no existingSecret), and read back from the cluster on
upgrades so it stays the same. Call with (dict "root" $ "name" $name).
*/}}
{{- define "flowwatch.componentSecretData" -}}
{{- $root := .root }}
{{- $data := deepCopy (index ($root.Values.secrets.components | default dict) .name | default dict) }}
{{- if and $root.Values.secrets.create (not $root.Values.secrets.existingSecret) }}
{{- if and (eq .name "ingest") $root.Values.secrets.generateIngestToken (not (hasKey $data "FLOWWATCH_INGEST_TOKEN")) }}
{{- $found := lookup "v1" "Secret" $root.Release.Namespace (include "flowwatch.componentName" .) }}
{{- $old := dig "data" "FLOWWATCH_INGEST_TOKEN" "" ($found | default dict) }}
{{- $_ := set $data "FLOWWATCH_INGEST_TOKEN" (ternary (b64dec $old) (randAlphaNum 48) (ne $old "")) }}
{{- end }}
{{- end }}
{{- if $data }}{{ toYaml $data }}{{ end }}
{{- end }}

{{- define "flowwatch.modelClaimName" -}}
{{- default (printf "%s-models" (include "flowwatch.fullname" .)) .Values.models.persistence.existingClaim }}
{{- end }}

{{/*
Files of a component as a dict name -> content: the chart's defaults under files/<component>/
(e.g. files/alerts/alerts.yaml, the service's own default config), overlaid by <component>.config.
Call with (dict "root" $ "name" $name "c" $component).
*/}}
{{- define "flowwatch.configFiles" -}}
{{- $files := dict }}
{{- range $path, $_ := .root.Files.Glob (printf "files/%s/*" .name) }}
{{- $_ := set $files (base $path) ($.root.Files.Get $path) }}
{{- end }}
{{- range $file, $content := .c.config }}
{{- $_ := set $files $file ($content | toString) }}
{{- end }}
{{- toYaml $files }}
{{- end }}

{{/*
The setting that points a service at each of its known config files (by file name).
*/}}
{{- define "flowwatch.configFileSettings" -}}
ingest:
  ranges.yaml: FLOWWATCH_INGEST_RANGES_FILE
alerts:
  alerts.yaml: FLOWWATCH_ALERTS_CONFIG_PATH
{{- end }}

{{/* Settings --------------------------------------------------------------------------------- */}}

{{/*
The FLOWWATCH_* settings every flowwatch process shares (shared/settings.py), as a YAML map.
Rendered into the shared ConfigMap, and inline into the hook Job (which runs before the
ConfigMap exists on install).
*/}}
{{- define "flowwatch.sharedEnv" -}}
FLOWWATCH_BROKER_URL: {{ .Values.kafka.brokers | quote }}
FLOWWATCH_REDIS_URL: {{ .Values.redis.url | quote }}
FLOWWATCH_MQTT_URL: {{ .Values.mqtt.url | quote }}
FLOWWATCH_TOPIC_PREFIX: {{ .Values.topics.prefix | quote }}
FLOWWATCH_PARTITIONS: {{ .Values.topics.partitions | quote }}
FLOWWATCH_REPLICATION_FACTOR: {{ .Values.topics.replicationFactor | quote }}
FLOWWATCH_DATA_DIR: "/data"
FLOWWATCH_MODEL_DIR: "/models"
FLOWWATCH_LOG_LEVEL: {{ .Values.settings.logLevel | quote }}
FLOWWATCH_TABLE_STORE: {{ .Values.settings.tableStore | quote }}
FLOWWATCH_STANDBY_REPLICAS: {{ .Values.settings.standbyReplicas | quote }}
FLOWWATCH_MAX_POLL_RECORDS: {{ .Values.settings.maxPollRecords | quote }}
FLOWWATCH_CACHE_TTL_S: {{ .Values.settings.cacheTtlSeconds | quote }}
{{- if ne .Values.kafka.securityProtocol "PLAINTEXT" }}
FLOWWATCH_KAFKA_SECURITY_PROTOCOL: {{ .Values.kafka.securityProtocol | quote }}
{{- if hasPrefix "SASL_" .Values.kafka.securityProtocol }}
FLOWWATCH_KAFKA_SASL_MECHANISM: {{ .Values.kafka.sasl.mechanism | quote }}
FLOWWATCH_KAFKA_SASL_USERNAME: {{ .Values.kafka.sasl.username | quote }}
{{- end }}
{{- if .Values.kafka.tls.existingSecret }}
FLOWWATCH_KAFKA_SSL_CAFILE: "/etc/flowwatch/kafka-tls/ca.crt"
{{- if .Values.kafka.tls.clientCert }}
FLOWWATCH_KAFKA_SSL_CERTFILE: "/etc/flowwatch/kafka-tls/tls.crt"
FLOWWATCH_KAFKA_SSL_KEYFILE: "/etc/flowwatch/kafka-tls/tls.key"
{{- end }}
{{- end }}
{{- end }}
{{- range $k, $v := .Values.env }}
{{ $k }}: {{ $v | toString | quote }}
{{- end }}
{{- end }}

{{/* Volume and mount of the Kafka TLS material, when configured. Call with the root context. */}}
{{- define "flowwatch.kafkaTlsVolume" -}}
{{- if .Values.kafka.tls.existingSecret }}
- name: kafka-tls
  secret:
    secretName: {{ .Values.kafka.tls.existingSecret }}
    defaultMode: 0440
{{- end }}
{{- end }}

{{- define "flowwatch.kafkaTlsMount" -}}
{{- if .Values.kafka.tls.existingSecret }}
- name: kafka-tls
  mountPath: /etc/flowwatch/kafka-tls
  readOnly: true
{{- end }}
{{- end }}

{{/* A hardened container securityContext for the chart's own Jobs and test pod. */}}
{{- define "flowwatch.jobSecurityContext" -}}
runAsNonRoot: true
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
capabilities:
  drop: [ALL]
{{- end }}

{{- define "flowwatch.jobPodSecurityContext" -}}
runAsNonRoot: true
runAsUser: 10001
runAsGroup: 10001
fsGroup: 10001
seccompProfile:
  type: RuntimeDefault
{{- end }}

{{/* Validation: fails the render with a message an operator can act on. ------------------------ */}}
{{- define "flowwatch.validate" -}}
{{- $partitions := int .Values.topics.partitions }}
{{- range $name := splitList " " (include "flowwatch.consumers" .) }}
{{- $c := index $.Values $name }}
{{- if $c.enabled }}
{{- if $c.autoscaling.enabled }}
{{- if gt (int $c.autoscaling.maxReplicas) $partitions }}
{{- fail (printf "%s.autoscaling.maxReplicas=%d is more than topics.partitions=%d: a Faust worker beyond the partition count gets no partition and sits idle. Lower maxReplicas or create the topics with more partitions." $name (int $c.autoscaling.maxReplicas) $partitions) }}
{{- end }}
{{- if gt (int $c.autoscaling.minReplicas) (int $c.autoscaling.maxReplicas) }}
{{- fail (printf "%s.autoscaling.minReplicas=%d is more than maxReplicas=%d." $name (int $c.autoscaling.minReplicas) (int $c.autoscaling.maxReplicas)) }}
{{- end }}
{{- if and (not $c.autoscaling.targetCPUUtilizationPercentage) (not $c.autoscaling.targetMemoryUtilizationPercentage) }}
{{- fail (printf "%s.autoscaling is enabled without a CPU or memory target." $name) }}
{{- end }}
{{- else if gt (int $c.replicaCount) $partitions }}
{{- fail (printf "%s.replicaCount=%d is more than topics.partitions=%d: a Faust worker beyond the partition count gets no partition and sits idle." $name (int $c.replicaCount) $partitions) }}
{{- end }}
{{- if not (gt (int $c.port) 0) }}
{{- fail (printf "%s.port must be set: the service serves /health, /ready and /metrics on it." $name) }}
{{- end }}
{{- end }}
{{- end }}
{{- if and (not .Values.secrets.create) (not .Values.secrets.existingSecret) .Values.secrets.env }}
{{- fail "secrets.env is set but secrets.create is false and no secrets.existingSecret is named: the values would be ignored." }}
{{- end }}
{{- if and .Values.secrets.existingSecret .Values.secrets.env }}
{{- fail "secrets.env and secrets.existingSecret are both set: put the values in your existing Secret instead." }}
{{- end }}
{{- if and (not .Values.secrets.create) .Values.secrets.components }}
{{- fail "secrets.components is set but secrets.create is false: the values would be ignored." }}
{{- end }}
{{- if .Values.ingest.enabled }}
{{- $own := index (.Values.secrets.components | default dict) "ingest" | default dict }}
{{- $given := or (hasKey $own "FLOWWATCH_INGEST_TOKEN") (hasKey .Values.secrets.env "FLOWWATCH_API_TOKENS") }}
{{- $generated := and .Values.secrets.create .Values.secrets.generateIngestToken }}
{{- if not (or $given $generated .Values.secrets.existingSecret) }}
{{- fail "ingest would run without a token and refuse every reading: set secrets.components.ingest.FLOWWATCH_INGEST_TOKEN, put FLOWWATCH_API_TOKENS in secrets.env, keep secrets.generateIngestToken=true (with secrets.create), or name a secrets.existingSecret that holds one." }}
{{- end }}
{{- end }}
{{- if and (hasPrefix "SASL_" .Values.kafka.securityProtocol) (not .Values.kafka.sasl.username) }}
{{- fail (printf "kafka.securityProtocol=%s needs kafka.sasl.username (and FLOWWATCH_KAFKA_SASL_PASSWORD in the Secret)." .Values.kafka.securityProtocol) }}
{{- end }}
{{- if and .Values.retrain.enabled (not .Values.models.persistence.enabled) }}
{{- fail "retrain.enabled needs models.persistence.enabled: without a shared model volume a retrained model vanishes with the Job's pod." }}
{{- end }}
{{- if and .Values.kafka.tls.existingSecret (not (hasSuffix "SSL" .Values.kafka.securityProtocol)) }}
{{- fail "kafka.tls.existingSecret is set but kafka.securityProtocol is not SSL or SASL_SSL." }}
{{- end }}
{{- end }}
