{{/*
The pod template of one component. Call with (dict "root" $ "name" $name "c" $component).
*/}}
{{- define "flowwatch.podTemplate" -}}
{{- $root := .root }}
{{- $name := .name }}
{{- $c := .c }}
{{- $web := gt (int $c.port) 0 }}
{{- $files := include "flowwatch.configFiles" . | fromYaml -}}
{{- $own := include "flowwatch.componentSecretData" (dict "root" $root "name" $name) | fromYaml -}}
{{- $shared := include "flowwatch.hasSecret" $root -}}
metadata:
  labels:
    {{- include "flowwatch.componentLabels" . | nindent 4 }}
    {{- with $c.podLabels }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
  annotations:
    # Roll the pods when their settings change.
    checksum/settings: {{ include (print $root.Template.BasePath "/configmap.yaml") $root | sha256sum }}
    # From the values, not the rendered Secrets: a generated ingest token must not roll the pods on every render.
    checksum/secret: {{ toJson $root.Values.secrets | sha256sum }}
    {{- with $c.podAnnotations }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
spec:
  serviceAccountName: {{ include "flowwatch.serviceAccountName" $root }}
  # The services never call the Kubernetes API.
  automountServiceAccountToken: false
  {{- with $root.Values.imagePullSecrets }}
  imagePullSecrets:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  securityContext:
    {{- toYaml $c.podSecurityContext | nindent 4 }}
  terminationGracePeriodSeconds: {{ $c.terminationGracePeriodSeconds }}
  {{- with $c.nodeSelector }}
  nodeSelector:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with $c.tolerations }}
  tolerations:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with $c.affinity }}
  affinity:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with $c.topologySpreadConstraints }}
  topologySpreadConstraints:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  containers:
    - name: {{ $name }}
      image: {{ include "flowwatch.image" $root | quote }}
      imagePullPolicy: {{ $root.Values.image.pullPolicy }}
      command: ["python", "-m", "services.{{ $name }}"]
      args:
        {{- toYaml $c.args | nindent 8 }}
      {{- if $web }}
      ports:
        - name: http
          containerPort: {{ $c.port }}
          protocol: TCP
      {{- end }}
      envFrom:
        - configMapRef:
            name: {{ include "flowwatch.fullname" $root }}-settings
        {{- if $shared }}
        # After the ConfigMap: a key in both (e.g. a Redis URL with a password) takes the Secret's value.
        - secretRef:
            name: {{ include "flowwatch.secretName" $root }}
        {{- end }}
        {{- if $own }}
        # This component's own secrets, which no other pod gets.
        - secretRef:
            name: {{ include "flowwatch.componentName" (dict "root" $root "name" $name) }}
        {{- end }}
      {{- with include "flowwatch.containerEnv" . | trim }}
      env:
        {{- . | nindent 8 }}
      {{- end }}
      {{- if $web }}
      {{- with $c.probes.startup }}
      {{- if .enabled }}
      startupProbe:
        httpGet: {path: {{ .path }}, port: http}
        periodSeconds: {{ .periodSeconds }}
        timeoutSeconds: {{ .timeoutSeconds }}
        failureThreshold: {{ .failureThreshold }}
      {{- end }}
      {{- end }}
      {{- with $c.probes.liveness }}
      {{- if .enabled }}
      livenessProbe:
        httpGet: {path: {{ .path }}, port: http}
        periodSeconds: {{ .periodSeconds }}
        timeoutSeconds: {{ .timeoutSeconds }}
        failureThreshold: {{ .failureThreshold }}
      {{- end }}
      {{- end }}
      {{- with $c.probes.readiness }}
      {{- if .enabled }}
      readinessProbe:
        httpGet: {path: {{ .path }}, port: http}
        periodSeconds: {{ .periodSeconds }}
        timeoutSeconds: {{ .timeoutSeconds }}
        failureThreshold: {{ .failureThreshold }}
      {{- end }}
      {{- end }}
      {{- end }}
      resources:
        {{- toYaml $c.resources | nindent 8 }}
      securityContext:
        {{- toYaml $c.securityContext | nindent 8 }}
      volumeMounts:
        - name: tmp
          mountPath: /tmp
        - name: data
          mountPath: /data
        {{- if has $name $root.Values.models.mountTo }}
        # Serving pods only read models (pickled files are code): only the retrain CronJobs write.
        - name: models
          mountPath: /models
          readOnly: true
        {{- end }}
        {{- if $files }}
        - name: config
          mountPath: /etc/flowwatch/{{ $name }}
          readOnly: true
        {{- end }}
        {{- if or $shared $own }}
        - name: secrets
          mountPath: {{ $root.Values.secrets.mountPath }}
          readOnly: true
        {{- end }}
        {{- with include "flowwatch.kafkaTlsMount" $root }}{{ . | trim | nindent 8 }}{{ end }}
  volumes:
    - name: tmp
      emptyDir:
        sizeLimit: 256Mi
    {{- if not $c.persistence.enabled }}
    # No claim: the table store starts empty and is rebuilt from the changelog on every start.
    - name: data
      emptyDir: {}
    {{- end }}
    {{- if has $name $root.Values.models.mountTo }}
    - name: models
      {{- if $root.Values.models.persistence.enabled }}
      persistentVolumeClaim:
        claimName: {{ include "flowwatch.modelClaimName" $root }}
      {{- else }}
      emptyDir: {}
      {{- end }}
    {{- end }}
    {{- if $files }}
    - name: config
      configMap:
        name: {{ include "flowwatch.componentName" (dict "root" $root "name" $name) }}-config
    {{- end }}
    {{- if or $shared $own }}
    - name: secrets
      projected:
        defaultMode: 0440
        sources:
          {{- if $shared }}
          - secret:
              name: {{ include "flowwatch.secretName" $root }}
          {{- end }}
          {{- if $own }}
          - secret:
              name: {{ include "flowwatch.componentName" (dict "root" $root "name" $name) }}
          {{- end }}
    {{- end }}
    {{- with include "flowwatch.kafkaTlsVolume" $root }}{{ . | trim | nindent 4 }}{{ end }}
{{- end }}

{{/* The explicit env of a component's container (after envFrom, so these win). Same call as podTemplate. */}}
{{- define "flowwatch.containerEnv" -}}
{{- $root := .root }}
{{- $name := .name }}
{{- $c := .c }}
{{- $files := include "flowwatch.configFiles" . | fromYaml }}
{{- if gt (int $c.port) 0 }}
- name: FLOWWATCH_WEB_HOST
  value: {{ $root.Values.settings.webHost | quote }}
- name: FLOWWATCH_WEB_PORT
  value: {{ $c.port | quote }}
{{- end }}
{{- $known := index (include "flowwatch.configFileSettings" . | fromYaml) $name | default dict }}
{{- range $file, $_ := $files }}
{{- with index $known $file }}
- name: {{ . }}
  value: /etc/flowwatch/{{ $name }}/{{ $file }}
{{- end }}
{{- end }}
{{- if eq $name "ingest" }}
# Each ingest pod has its own MQTT session (a persistent one, acknowledged after the Kafka write): two
# workers with one client id would take the broker connection from each other.
- name: FLOWWATCH_INGEST_MQTT_CLIENT_ID
  valueFrom:
    fieldRef:
      fieldPath: metadata.name
{{- end }}
{{- if and (eq $name "history") $root.Values.historyStore.migrate.enabled }}
# The hook Job migrates the schema before the pods roll; workers only check its version.
- name: FLOWWATCH_HISTORY_MIGRATE_ON_START
  value: "false"
{{- end }}
{{- if and (eq $name "console") $root.Values.historyStore.migrate.enabled }}
# The console's tables are in the history schema: the same hook Job migrates them.
- name: FLOWWATCH_CONSOLE_MIGRATE_ON_START
  value: "false"
{{- end }}
{{- with $c.extraEnv }}
{{ toYaml . }}
{{- end }}
{{- end }}
