{{/*
Shared partials of the Tern chart. Component-aware helpers take a dict:
  (dict "ctx" $ "component" "queue")
and read that component's values from .Values.<component>.
*/}}

{{/* Chart name. */}}
{{- define "tern.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Name prefix of every object: <release>-tern, or <release> when it contains the chart name. */}}
{{- define "tern.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 50 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 50 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 50 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{/* Name of a component's objects: <fullname>-<component>. */}}
{{- define "tern.componentName" -}}
{{- printf "%s-%s" (include "tern.fullname" .ctx) .component }}
{{- end }}

{{- define "tern.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
What the chart knows of each service: its ports (ARCHITECTURE.md) and what it
talks to (policy calls delivery: DeliveryService.VerifyRecipient, the
recipient callouts of relay domains). Read with:
$c := index (include "tern.components" . | fromYaml) "queue"
*/}}
{{- define "tern.components" -}}
admin:    {grpcPort: 7000, metricsPort: 9100, database: false, nats: false, callsQueue: true,  callsPolicy: true,  callsDelivery: false, callsWebhooks: true,  mailName: false}
ingress:  {grpcPort: 7001, metricsPort: 9101, database: false, nats: false, callsQueue: true,  callsPolicy: true,  callsDelivery: false, callsWebhooks: false, mailName: true}
policy:   {grpcPort: 7002, metricsPort: 9102, database: true,  nats: false, callsQueue: false, callsPolicy: false, callsDelivery: true,  callsWebhooks: false, mailName: false}
queue:    {grpcPort: 7003, metricsPort: 9103, database: true,  nats: true,  callsQueue: false, callsPolicy: false, callsDelivery: false, callsWebhooks: false, mailName: false}
delivery: {grpcPort: 7004, metricsPort: 9104, database: false, nats: true,  callsQueue: true,  callsPolicy: true,  callsDelivery: false, callsWebhooks: false, mailName: true}
bounce:   {grpcPort: 7005, metricsPort: 9105, database: false, nats: true,  callsQueue: true,  callsPolicy: true,  callsDelivery: false, callsWebhooks: false, mailName: true}
webhooks: {grpcPort: 7006, metricsPort: 9106, database: true,  nats: true,  callsQueue: false, callsPolicy: false, callsDelivery: false, callsWebhooks: false, mailName: false}
{{- end }}

{{/*
The components this release runs, in the order of the table above: every one
but webhooks, which `webhooks.enabled` turns off. For the lists that name
services (alerts, certificate names).
*/}}
{{- define "tern.enabledComponents" -}}
{{- $out := list "admin" "ingress" "policy" "queue" "delivery" "bounce" }}
{{- if .Values.webhooks.enabled }}
{{- $out = append $out "webhooks" }}
{{- end }}
{{- toJson $out }}
{{- end }}

{{- define "tern.component" -}}
{{- index (include "tern.components" .ctx | fromYaml) .component | toYaml }}
{{- end }}

{{/* Labels of every object. */}}
{{- define "tern.labels" -}}
helm.sh/chart: {{ include "tern.chart" . }}
app.kubernetes.io/name: {{ include "tern.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/part-of: tern
{{- if .Chart.AppVersion }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
{{- end }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- with .Values.global.labels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* Labels of a component's objects. */}}
{{- define "tern.componentLabels" -}}
{{ include "tern.labels" .ctx }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{/* Selector labels of a component's pods (never change: Deployment selectors are immutable). */}}
{{- define "tern.selectorLabels" -}}
app.kubernetes.io/name: {{ include "tern.name" .ctx }}
app.kubernetes.io/instance: {{ .ctx.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{/* metadata.annotations from global.annotations plus an optional extra dict. */}}
{{- define "tern.annotations" -}}
{{- $all := merge (dict) (.extra | default dict) (.ctx.Values.global.annotations | default dict) }}
{{- with $all }}
annotations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end }}

{{- define "tern.image" -}}
{{- $tag := .Values.image.tag | default .Chart.AppVersion }}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository $tag }}
{{- end }}
{{- end }}

{{- define "tern.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- .Values.serviceAccount.name | default (include "tern.fullname" .) }}
{{- else }}
{{- .Values.serviceAccount.name | default "default" }}
{{- end }}
{{- end }}

{{/* Secret names (existing Secrets by default). */}}
{{- define "tern.postgresSecretName" -}}
{{- .Values.postgres.secret.name | default (printf "%s-postgres" (include "tern.fullname" .)) }}
{{- end }}
{{- define "tern.dkimKekSecretName" -}}
{{- .Values.dkim.kekSecret.name | default (printf "%s-dkim-kek" (include "tern.fullname" .)) }}
{{- end }}
{{- define "tern.srsSecretName" -}}
{{- .Values.srs.secretsSecret.name | default (printf "%s-srs" (include "tern.fullname" .)) }}
{{- end }}
{{- define "tern.webhooksKekSecretName" -}}
{{- .Values.webhooks.kekSecret.name | default (printf "%s-webhooks-kek" (include "tern.fullname" .)) }}
{{- end }}
{{- define "tern.natsSecretName" -}}
{{- .Values.nats.secret.name | default (printf "%s-nats" (include "tern.fullname" .)) }}
{{- end }}
{{- define "tern.tlsSecretName" -}}
{{- .Values.tls.secretName | default (printf "%s-tls" (include "tern.fullname" .)) }}
{{- end }}
{{- define "tern.grpcTlsSecretName" -}}
{{- .Values.grpcTls.secretName | default (printf "%s-grpc-tls" (include "tern.fullname" .)) }}
{{- end }}
{{- define "tern.adminTokensSecretName" -}}
{{- .Values.admin.tokens.secretName | default (printf "%s-admin-tokens" (include "tern.fullname" .)) }}
{{- end }}

{{/* host:port of a component's gRPC Service, e.g. tern-queue.mail.svc:7003. */}}
{{- define "tern.grpcAddr" -}}
{{- $c := include "tern.component" . | fromYaml }}
{{- printf "%s.%s.svc:%d" (include "tern.componentName" .) .ctx.Release.Namespace (int $c.grpcPort) }}
{{- end }}

{{/* Mount points inside the containers. */}}
{{- define "tern.paths" -}}
tls: /etc/tern/tls
grpcTls: /etc/tern/grpc-tls
adminTokens: /etc/tern/admin-tokens
{{- end }}

{{/* Environment variables chart-managed names cannot be overridden by plain env. */}}
{{- define "tern.env" -}}
{{- $ctx := .ctx }}
{{- $v := index $ctx.Values .component }}
{{- $c := include "tern.component" . | fromYaml }}
{{- $paths := include "tern.paths" $ctx | fromYaml }}
{{- $user := merge (dict) ($v.env | default dict) ($ctx.Values.config.env | default dict) }}
{{- $env := list }}
{{- $env = append $env (dict "name" "TERN_GRPC_LISTEN" "value" (printf "0.0.0.0:%d" (int $c.grpcPort))) }}
{{- $env = append $env (dict "name" "TERN_METRICS_LISTEN" "value" (printf "0.0.0.0:%d" (int $c.metricsPort))) }}
{{- $env = append $env (dict "name" "TERN_LOG_LEVEL" "value" ($v.logLevel | default $ctx.Values.config.logLevel)) }}
{{- $env = append $env (dict "name" "TERN_SHUTDOWN_GRACE_MS" "value" (printf "%d" (mul (int $v.shutdown.graceSeconds) 1000))) }}
{{- if and $c.mailName $ctx.Values.config.hostname }}
{{- $env = append $env (dict "name" "TERN_HOSTNAME" "value" $ctx.Values.config.hostname) }}
{{- end }}
{{- $env = append $env (dict "name" "OTEL_SERVICE_NAME" "value" (printf "tern-%s" .component)) }}
{{- with $ctx.Values.config.otlpEndpoint }}
{{- $env = append $env (dict "name" "OTEL_EXPORTER_OTLP_ENDPOINT" "value" .) }}
{{- end }}
{{- if $c.database }}
{{- $env = append $env (dict "name" "TERN_DATABASE_URL" "valueFrom" (dict "secretKeyRef" (dict "name" (include "tern.postgresSecretName" $ctx) "key" $ctx.Values.postgres.secret.key))) }}
{{- end }}
{{- if $c.nats }}
{{- $env = append $env (dict "name" "TERN_NATS_URL" "valueFrom" (dict "secretKeyRef" (dict "name" (include "tern.natsSecretName" $ctx) "key" $ctx.Values.nats.secret.key))) }}
{{- end }}
{{- if or (eq .component "policy") (eq .component "delivery") }}
{{- /* Optional: without the Secret no key can be added, and stored keys stop the start (the services say so naming TERN_DKIM_KEK). */}}
{{- $env = append $env (dict "name" "TERN_DKIM_KEK" "valueFrom" (dict "secretKeyRef" (dict "name" (include "tern.dkimKekSecretName" $ctx) "key" $ctx.Values.dkim.kekSecret.key "optional" true))) }}
{{- end }}
{{- if and (eq .component "policy") $ctx.Values.srs.domain }}
{{- /* Not optional: SRS on without its secrets would not start (policy names TERN_SRS_SECRETS); a missing Secret keeps the pod from starting, naming it. */}}
{{- $env = append $env (dict "name" "TERN_SRS_DOMAIN" "value" $ctx.Values.srs.domain) }}
{{- $env = append $env (dict "name" "TERN_SRS_SECRETS" "valueFrom" (dict "secretKeyRef" (dict "name" (include "tern.srsSecretName" $ctx) "key" $ctx.Values.srs.secretsSecret.key))) }}
{{- $env = append $env (dict "name" "TERN_SRS_MAX_AGE_DAYS" "value" (printf "%d" (int $ctx.Values.srs.maxAgeDays))) }}
{{- end }}
{{- if $c.callsQueue }}
{{- $env = append $env (dict "name" "TERN_QUEUE_ADDR" "value" (include "tern.grpcAddr" (dict "ctx" $ctx "component" "queue"))) }}
{{- end }}
{{- if $c.callsPolicy }}
{{- $env = append $env (dict "name" "TERN_POLICY_ADDR" "value" (include "tern.grpcAddr" (dict "ctx" $ctx "component" "policy"))) }}
{{- end }}
{{- if $c.callsDelivery }}
{{- $env = append $env (dict "name" "TERN_DELIVERY_ADDR" "value" (include "tern.grpcAddr" (dict "ctx" $ctx "component" "delivery"))) }}
{{- end }}
{{- if and $c.callsWebhooks $ctx.Values.webhooks.enabled }}
{{- $env = append $env (dict "name" "TERN_WEBHOOKS_ADDR" "value" (include "tern.grpcAddr" (dict "ctx" $ctx "component" "webhooks"))) }}
{{- end }}
{{- if eq .component "webhooks" }}
{{- /* Optional, as TERN_DKIM_KEK: without the Secret endpoint secrets are stored unsealed; once sealed ones are stored the service does not start without the same KEK (it says so naming TERN_WEBHOOKS_KEK). */}}
{{- $env = append $env (dict "name" "TERN_WEBHOOKS_KEK" "valueFrom" (dict "secretKeyRef" (dict "name" (include "tern.webhooksKekSecretName" $ctx) "key" $v.kekSecret.key "optional" true))) }}
{{- $env = append $env (dict "name" "TERN_WEBHOOKS_ALLOW_HTTP" "value" (ternary "true" "false" (eq (toString $v.allowHttp) "true"))) }}
{{- $env = append $env (dict "name" "TERN_WEBHOOKS_ALLOW_PRIVATE" "value" (ternary "true" "false" (eq (toString $v.allowPrivate) "true"))) }}
{{- end }}
{{- if eq .component "ingress" }}
{{- $env = append $env (dict "name" "TERN_SMTP_LISTEN" "value" "0.0.0.0:2525") }}
{{- if $ctx.Values.tls.enabled }}
{{- $env = append $env (dict "name" "TERN_SUBMISSION_LISTEN" "value" "0.0.0.0:2587") }}
{{- $env = append $env (dict "name" "TERN_SUBMISSIONS_LISTEN" "value" "0.0.0.0:2465") }}
{{- $env = append $env (dict "name" "TERN_TLS_CERT_FILE" "value" (printf "%s/tls.crt" $paths.tls)) }}
{{- $env = append $env (dict "name" "TERN_TLS_KEY_FILE" "value" (printf "%s/tls.key" $paths.tls)) }}
{{- else }}
{{- $env = append $env (dict "name" "TERN_SUBMISSION_LISTEN" "value" "off") }}
{{- $env = append $env (dict "name" "TERN_SUBMISSIONS_LISTEN" "value" "off") }}
{{- end }}
{{- if $v.proxyProtocol.enabled }}
{{- $env = append $env (dict "name" "TERN_PROXY_PROTOCOL_CIDRS" "value" (join "," $v.proxyProtocol.trustedCidrs)) }}
{{- end }}
{{- end }}
{{- if eq .component "delivery" }}
{{- $env = append $env (dict "name" "TERN_MTA_STS" "value" (ternary "true" "false" (eq (toString $v.mtaSts) "true"))) }}
{{- end }}
{{- if eq .component "admin" }}
{{- $env = append $env (dict "name" "TERN_ADMIN_TOKENS_FILE" "value" (printf "%s/%s" $paths.adminTokens $v.tokens.key)) }}
{{- if $v.certAuth }}
{{- $env = append $env (dict "name" "TERN_ADMIN_CERT_AUTH" "value" "true") }}
{{- end }}
{{- end }}
{{- if $ctx.Values.grpcTls.enabled }}
{{- $env = append $env (dict "name" "TERN_GRPC_TLS_CERT_FILE" "value" (printf "%s/tls.crt" $paths.grpcTls)) }}
{{- $env = append $env (dict "name" "TERN_GRPC_TLS_KEY_FILE" "value" (printf "%s/tls.key" $paths.grpcTls)) }}
{{- $env = append $env (dict "name" "TERN_GRPC_TLS_CA_FILE" "value" (printf "%s/ca.crt" $paths.grpcTls)) }}
{{- end }}
{{- $out := list }}
{{- $managed := dict }}
{{- range $env }}
{{- $_ := set $managed .name true }}
{{- if not (and (hasKey $user .name) (hasKey . "value")) }}
{{- $out = append $out . }}
{{- end }}
{{- end }}
{{- range $name := keys $user | sortAlpha }}
{{- $out = append $out (dict "name" $name "value" (toString (get $user $name))) }}
{{- end }}
{{- range $v.extraEnv }}
{{- $out = append $out . }}
{{- end }}
{{- toYaml $out }}
{{- end }}

{{/* Volumes and mounts of a component's pod (tmp, certificates, tokens). */}}
{{- define "tern.volumes" -}}
{{- $ctx := .ctx }}
{{- $v := index $ctx.Values .component }}
- name: tmp
  emptyDir:
    medium: Memory
    sizeLimit: 64Mi
{{- if and (eq .component "ingress") $ctx.Values.tls.enabled }}
- name: tls
  secret:
    secretName: {{ include "tern.tlsSecretName" $ctx }}
    defaultMode: 0440
{{- end }}
{{- if $ctx.Values.grpcTls.enabled }}
- name: grpc-tls
  secret:
    secretName: {{ include "tern.grpcTlsSecretName" $ctx }}
    defaultMode: 0440
{{- end }}
{{- if eq .component "admin" }}
- name: admin-tokens
  secret:
    secretName: {{ include "tern.adminTokensSecretName" $ctx }}
    defaultMode: 0440
{{- end }}
{{- with $v.extraVolumes }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{- define "tern.volumeMounts" -}}
{{- $ctx := .ctx }}
{{- $v := index $ctx.Values .component }}
{{- $paths := include "tern.paths" $ctx | fromYaml }}
- name: tmp
  mountPath: /tmp
{{- if and (eq .component "ingress") $ctx.Values.tls.enabled }}
{{- /* The whole directory, not subPath: a renewed certificate then appears in place. */}}
- name: tls
  mountPath: {{ $paths.tls }}
  readOnly: true
{{- end }}
{{- if $ctx.Values.grpcTls.enabled }}
- name: grpc-tls
  mountPath: {{ $paths.grpcTls }}
  readOnly: true
{{- end }}
{{- if eq .component "admin" }}
- name: admin-tokens
  mountPath: {{ $paths.adminTokens }}
  readOnly: true
{{- end }}
{{- with $v.extraVolumeMounts }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/*
Probes. Every service serves grpc.health.v1 on its gRPC port, so the kubelet
asks it natively, naming what it asks: "readiness" (the same answer as the
empty name, the service's own gRPC names and /readyz: started, dependencies
reachable, not draining) for the readiness probe, "liveness" (SERVING while
the process answers, dependencies or not, like /healthz) for the startup and
liveness probes, so that a dependency down takes a pod out of its Service
without restarting it. The kubelet's gRPC probe has no TLS: under grpcTls the
same checks go to /healthz and /readyz on the metrics port instead.
*/}}
{{- define "tern.probes" -}}
{{- $c := include "tern.component" . | fromYaml }}
{{- $grpc := not .ctx.Values.grpcTls.enabled }}
startupProbe:
  {{- if $grpc }}
  grpc:
    port: {{ int $c.grpcPort }}
    service: liveness
  {{- else }}
  httpGet:
    path: /healthz
    port: metrics
  {{- end }}
  periodSeconds: 2
  timeoutSeconds: 2
  failureThreshold: 60
readinessProbe:
  {{- if $grpc }}
  grpc:
    port: {{ int $c.grpcPort }}
    service: readiness
  {{- else }}
  httpGet:
    path: /readyz
    port: metrics
  {{- end }}
  periodSeconds: 5
  timeoutSeconds: 2
  failureThreshold: 2
livenessProbe:
  {{- if $grpc }}
  grpc:
    port: {{ int $c.grpcPort }}
    service: liveness
  {{- else }}
  httpGet:
    path: /healthz
    port: metrics
  {{- end }}
  periodSeconds: 10
  timeoutSeconds: 5
  failureThreshold: 6
{{- end }}

{{/* Seconds the kubelet waits after SIGTERM (preStop included) before SIGKILL. */}}
{{- define "tern.terminationGrace" -}}
{{- $v := index .ctx.Values .component }}
{{- if not (kindIs "invalid" $v.terminationGracePeriodSeconds) }}
{{- int $v.terminationGracePeriodSeconds }}
{{- else }}
{{- add (int $v.shutdown.preStopSleepSeconds) (int $v.shutdown.graceSeconds) 15 }}
{{- end }}
{{- end }}

{{/* A component's Deployment, deep-merged with <component>.merge. */}}
{{- define "tern.deployment" -}}
{{- $ctx := .ctx }}
{{- $v := index $ctx.Values .component }}
{{- $c := include "tern.component" . | fromYaml }}
{{- $name := include "tern.componentName" . }}
{{- $grace := include "tern.terminationGrace" . | int }}
{{- /* After its grace a process may take 5 s more to close what is left (libs/runtime SHUTDOWN_TAIL_MS); 5 s margin on top. */}}
{{- $needed := add (int $v.shutdown.preStopSleepSeconds) (int $v.shutdown.graceSeconds) 10 }}
{{- if lt $grace $needed }}
{{- fail (printf "%s.terminationGracePeriodSeconds (%d) is shorter than shutdown.preStopSleepSeconds + shutdown.graceSeconds + 10 s of closing (%d): the pod would be killed mid-shutdown. Raise it or leave it null." .component $grace $needed) }}
{{- end }}
{{- $doc := include "tern.deploymentBase" . | fromYaml }}
{{- if hasKey $doc "Error" }}
{{- fail (printf "internal: the %s Deployment did not render as YAML: %s" .component $doc.Error) }}
{{- end }}
{{- toYaml (mergeOverwrite $doc (deepCopy ($v.merge | default dict))) }}
{{- end }}

{{- define "tern.deploymentBase" -}}
{{- $ctx := .ctx }}
{{- $v := index $ctx.Values .component }}
{{- $c := include "tern.component" . | fromYaml }}
{{- $autoscaled := $v.autoscaling.enabled }}
apiVersion: apps/v1
kind: Deployment
metadata:
  name: {{ include "tern.componentName" . }}
  namespace: {{ $ctx.Release.Namespace }}
  labels:
    {{- include "tern.componentLabels" . | nindent 4 }}
  {{- with include "tern.annotations" (dict "ctx" $ctx) }}{{ nindent 2 . }}{{ end }}
spec:
  {{- if not $autoscaled }}
  replicas: {{ int $v.replicas }}
  {{- end }}
  revisionHistoryLimit: 5
  selector:
    matchLabels:
      {{- include "tern.selectorLabels" . | nindent 6 }}
  strategy:
    type: RollingUpdate
    rollingUpdate:
      # New pods come up before old ones stop: capacity never dips during a rollout.
      maxSurge: 25%
      maxUnavailable: 0
  template:
    metadata:
      labels:
        {{- include "tern.selectorLabels" . | nindent 8 }}
        app.kubernetes.io/part-of: tern
        {{- with $v.podLabels }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
      {{- with $v.podAnnotations }}
      annotations:
        {{- toYaml . | nindent 8 }}
      {{- end }}
    spec:
      serviceAccountName: {{ include "tern.serviceAccountName" $ctx }}
      automountServiceAccountToken: false
      enableServiceLinks: false
      terminationGracePeriodSeconds: {{ include "tern.terminationGrace" . }}
      securityContext:
        {{- toYaml $ctx.Values.podSecurityContext | nindent 8 }}
      {{- with $ctx.Values.image.pullSecrets }}
      imagePullSecrets:
        {{- range . }}
        - name: {{ . }}
        {{- end }}
      {{- end }}
      {{- with $v.priorityClassName }}
      priorityClassName: {{ . }}
      {{- end }}
      {{- with $v.nodeSelector }}
      nodeSelector:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      {{- with $v.tolerations }}
      tolerations:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      affinity:
        {{- if $v.affinity }}
        {{- toYaml $v.affinity | nindent 8 }}
        {{- else }}
        podAntiAffinity:
          preferredDuringSchedulingIgnoredDuringExecution:
            - weight: 100
              podAffinityTerm:
                topologyKey: kubernetes.io/hostname
                labelSelector:
                  matchLabels:
                    {{- include "tern.selectorLabels" . | nindent 20 }}
        {{- end }}
      {{- with $v.topologySpreadConstraints }}
      topologySpreadConstraints:
        {{- range . }}
        - {{ toYaml (merge (deepCopy .) (dict "labelSelector" (dict "matchLabels" (include "tern.selectorLabels" $ | fromYaml)))) | nindent 10 | trim }}
        {{- end }}
      {{- end }}
      containers:
        - name: {{ .component }}
          image: {{ include "tern.image" $ctx }}
          imagePullPolicy: {{ $ctx.Values.image.pullPolicy }}
          # The image's entry point (tern-entry) starts the service named here.
          args: [{{ .component | quote }}]
          ports:
            - name: grpc
              containerPort: {{ int $c.grpcPort }}
              protocol: TCP
            - name: metrics
              containerPort: {{ int $c.metricsPort }}
              protocol: TCP
            {{- if eq .component "ingress" }}
            - name: smtp
              containerPort: 2525
              protocol: TCP
            {{- if $ctx.Values.tls.enabled }}
            - name: submission
              containerPort: 2587
              protocol: TCP
            - name: submissions
              containerPort: 2465
              protocol: TCP
            {{- end }}
            {{- end }}
          env:
            {{- include "tern.env" . | nindent 12 }}
          {{- include "tern.probes" . | nindent 10 }}
          {{- if gt (int $v.shutdown.preStopSleepSeconds) 0 }}
          lifecycle:
            preStop:
              exec:
                command: ["sleep", {{ $v.shutdown.preStopSleepSeconds | toString | quote }}]
          {{- end }}
          resources:
            {{- toYaml $v.resources | nindent 12 }}
          securityContext:
            {{- toYaml $ctx.Values.containerSecurityContext | nindent 12 }}
          volumeMounts:
            {{- include "tern.volumeMounts" . | nindent 12 }}
      volumes:
        {{- include "tern.volumes" . | nindent 8 }}
{{- end }}

{{/* The Service of a component: gRPC and metrics. Headless, so that DNS
     answers with every ready pod and the gRPC clients (round_robin) spread
     calls over all replicas instead of pinning one HTTP/2 connection to one
     pod behind a ClusterIP; servers cap connection age so that clients
     re-resolve and find new replicas. */}}
{{- define "tern.service" -}}
{{- $c := include "tern.component" . | fromYaml }}
apiVersion: v1
kind: Service
metadata:
  name: {{ include "tern.componentName" . }}
  namespace: {{ .ctx.Release.Namespace }}
  labels:
    {{- include "tern.componentLabels" . | nindent 4 }}
  {{- with include "tern.annotations" (dict "ctx" .ctx) }}{{ nindent 2 . }}{{ end }}
spec:
  type: ClusterIP
  clusterIP: None
  selector:
    {{- include "tern.selectorLabels" . | nindent 4 }}
  ports:
    - name: grpc
      port: {{ int $c.grpcPort }}
      targetPort: grpc
      protocol: TCP
      appProtocol: grpc
    - name: metrics
      port: {{ int $c.metricsPort }}
      targetPort: metrics
      protocol: TCP
      appProtocol: http
{{- end }}

{{/* PodDisruptionBudget of a component (on by default). */}}
{{- define "tern.pdb" -}}
{{- $v := index .ctx.Values .component }}
{{- if $v.pdb.enabled }}
apiVersion: policy/v1
kind: PodDisruptionBudget
metadata:
  name: {{ include "tern.componentName" . }}
  namespace: {{ .ctx.Release.Namespace }}
  labels:
    {{- include "tern.componentLabels" . | nindent 4 }}
  {{- with include "tern.annotations" (dict "ctx" .ctx) }}{{ nindent 2 . }}{{ end }}
spec:
  {{- if not (kindIs "invalid" $v.pdb.minAvailable) }}
  minAvailable: {{ $v.pdb.minAvailable }}
  {{- else }}
  maxUnavailable: {{ $v.pdb.maxUnavailable }}
  {{- end }}
  selector:
    matchLabels:
      {{- include "tern.selectorLabels" . | nindent 6 }}
{{- end }}
{{- end }}

{{/*
HorizontalPodAutoscaler of a component: CPU, plus ingress' connections
(Pods metric) and delivery's queue depth (External metric).
*/}}
{{- define "tern.hpa" -}}
{{- $v := index .ctx.Values .component }}
{{- $a := $v.autoscaling }}
{{- $keda := and (eq .component "delivery") $a.keda.enabled }}
{{- if and $a.enabled (not $keda) }}
{{- if lt (int $a.maxReplicas) (int $a.minReplicas) }}
{{- fail (printf "%s.autoscaling.maxReplicas (%d) is below minReplicas (%d)" .component (int $a.maxReplicas) (int $a.minReplicas)) }}
{{- end }}
{{- $metrics := list }}
{{- if not (kindIs "invalid" $a.targetCPUUtilizationPercentage) }}
{{- $metrics = append $metrics (dict "type" "Resource" "resource" (dict "name" "cpu" "target" (dict "type" "Utilization" "averageUtilization" (int $a.targetCPUUtilizationPercentage)))) }}
{{- end }}
{{- if and (eq .component "ingress") $a.connections.enabled }}
{{- $metrics = append $metrics (dict "type" "Pods" "pods" (dict "metric" (dict "name" $a.connections.metricName) "target" (dict "type" "AverageValue" "averageValue" (toString $a.connections.averageValue)))) }}
{{- end }}
{{- if and (eq .component "delivery") $a.queueDepth.enabled }}
{{- $metric := dict "name" $a.queueDepth.metricName }}
{{- with $a.queueDepth.selector }}
{{- $_ := set $metric "selector" (dict "matchLabels" .) }}
{{- end }}
{{- $metrics = append $metrics (dict "type" "External" "external" (dict "metric" $metric "target" (dict "type" "AverageValue" "averageValue" (toString $a.queueDepth.averageValue)))) }}
{{- end }}
{{- if not $metrics }}
{{- fail (printf "%s.autoscaling.enabled needs a metric: set targetCPUUtilizationPercentage%s" .component (ternary ", autoscaling.queueDepth.enabled or autoscaling.keda.enabled" "" (eq .component "delivery"))) }}
{{- end }}
apiVersion: autoscaling/v2
kind: HorizontalPodAutoscaler
metadata:
  name: {{ include "tern.componentName" . }}
  namespace: {{ .ctx.Release.Namespace }}
  labels:
    {{- include "tern.componentLabels" . | nindent 4 }}
  {{- with include "tern.annotations" (dict "ctx" .ctx) }}{{ nindent 2 . }}{{ end }}
spec:
  scaleTargetRef:
    apiVersion: apps/v1
    kind: Deployment
    name: {{ include "tern.componentName" . }}
  minReplicas: {{ int $a.minReplicas }}
  maxReplicas: {{ int $a.maxReplicas }}
  metrics:
    {{- toYaml $metrics | nindent 4 }}
  {{- with $a.behavior }}
  behavior:
    {{- toYaml . | nindent 4 }}
  {{- end }}
{{- end }}
{{- end }}

{{/* Pod selector of one component, for NetworkPolicy peers. */}}
{{- define "tern.peer" -}}
podSelector:
  matchLabels:
    {{- include "tern.selectorLabels" . | nindent 4 }}
{{- end }}

{{/* Egress rule to a port on the given peers (any address when none). */}}
{{- define "tern.egressTo" -}}
- ports:
    {{- range .protocols }}
    - protocol: {{ . }}
      port: {{ int $.port }}
    {{- end }}
  {{- with .to }}
  to:
    {{- toYaml . | nindent 4 }}
  {{- end }}
{{- end }}

{{/*
NetworkPolicy of a component: who may call it, and what it may reach.
*/}}
{{- define "tern.networkPolicy" -}}
{{- $ctx := .ctx }}
{{- $np := $ctx.Values.networkPolicy }}
{{- if $np.enabled }}
{{- $c := include "tern.component" . | fromYaml }}
{{- $callers := dict "policy" (list "ingress" "delivery" "admin" "bounce") "queue" (list "ingress" "delivery" "bounce" "admin") "delivery" (list "policy") "webhooks" (list "admin") }}
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: {{ include "tern.componentName" . }}
  namespace: {{ $ctx.Release.Namespace }}
  labels:
    {{- include "tern.componentLabels" . | nindent 4 }}
  {{- with include "tern.annotations" (dict "ctx" $ctx) }}{{ nindent 2 . }}{{ end }}
spec:
  podSelector:
    matchLabels:
      {{- include "tern.selectorLabels" . | nindent 6 }}
  policyTypes: [Ingress, Egress]
  ingress:
    # Prometheus (or anyone allowed by networkPolicy.metricsFrom) on the metrics port.
    - ports:
        - protocol: TCP
          port: {{ int $c.metricsPort }}
      {{- if $np.metricsFrom }}
      from:
        {{- toYaml $np.metricsFrom | nindent 8 }}
      {{- else }}
      from:
        - namespaceSelector: {}
      {{- end }}
    {{- if eq .component "ingress" }}
    # SMTP from anywhere: this is the MX.
    - ports:
        - protocol: TCP
          port: 2525
        {{- if $ctx.Values.tls.enabled }}
        - protocol: TCP
          port: 2587
        - protocol: TCP
          port: 2465
        {{- end }}
    {{- end }}
    {{- with get $callers .component }}
    - ports:
        - protocol: TCP
          port: {{ int $c.grpcPort }}
      from:
        {{- range . }}
        - {{ include "tern.peer" (dict "ctx" $ctx "component" .) | nindent 10 | trim }}
        {{- end }}
    {{- end }}
    {{- if eq .component "admin" }}
    # The operator API: pods of this release (the CLI in a pod), plus networkPolicy.adminFrom.
    - ports:
        - protocol: TCP
          port: {{ int $c.grpcPort }}
      from:
        - podSelector:
            matchLabels:
              app.kubernetes.io/instance: {{ $ctx.Release.Name }}
        {{- with $np.adminFrom }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
    {{- end }}
  egress:
    {{- include "tern.egressTo" (dict "port" 53 "protocols" (list "UDP" "TCP") "to" $np.dns.to) | nindent 4 }}
    {{- if $c.database }}
    {{- include "tern.egressTo" (dict "port" $np.postgres.port "protocols" (list "TCP") "to" $np.postgres.to) | nindent 4 }}
    {{- end }}
    {{- if $c.nats }}
    {{- include "tern.egressTo" (dict "port" $np.nats.port "protocols" (list "TCP") "to" $np.nats.to) | nindent 4 }}
    {{- end }}
    {{- if $c.callsQueue }}
    - ports:
        - protocol: TCP
          port: 7003
      to:
        - {{ include "tern.peer" (dict "ctx" $ctx "component" "queue") | nindent 10 | trim }}
    {{- end }}
    {{- if $c.callsPolicy }}
    - ports:
        - protocol: TCP
          port: 7002
      to:
        - {{ include "tern.peer" (dict "ctx" $ctx "component" "policy") | nindent 10 | trim }}
    {{- end }}
    {{- if $c.callsDelivery }}
    # Recipient callouts of relay domains (DeliveryService.VerifyRecipient).
    - ports:
        - protocol: TCP
          port: 7004
      to:
        - {{ include "tern.peer" (dict "ctx" $ctx "component" "delivery") | nindent 10 | trim }}
    {{- end }}
    {{- if and $c.callsWebhooks $ctx.Values.webhooks.enabled }}
    - ports:
        - protocol: TCP
          port: 7006
      to:
        - {{ include "tern.peer" (dict "ctx" $ctx "component" "webhooks") | nindent 10 | trim }}
    {{- end }}
    {{- if eq .component "delivery" }}
    # Remote mail servers: SMTP (25), submissions (465), submission (587), anywhere.
    - ports:
        - protocol: TCP
          port: 25
        - protocol: TCP
          port: 465
        - protocol: TCP
          port: 587
        {{- if $ctx.Values.delivery.mtaSts }}
        # MTA-STS policies: https://mta-sts.<domain>/.well-known/mta-sts.txt
        - protocol: TCP
          port: 443
        {{- end }}
        {{- range $ctx.Values.delivery.networkPolicy.extraEgressPorts }}
        - protocol: TCP
          port: {{ int . }}
        {{- end }}
    {{- end }}
    {{- if eq .component "webhooks" }}
    # Receivers' endpoints: HTTPS (443) and webhooks.networkPolicy.extraEgressPorts, anywhere
    # (the service itself refuses private addresses unless webhooks.allowPrivate).
    - ports:
        - protocol: TCP
          port: 443
        {{- range $ctx.Values.webhooks.networkPolicy.extraEgressPorts }}
        - protocol: TCP
          port: {{ int . }}
        {{- end }}
    {{- with $ctx.Values.webhooks.networkPolicy.extraEgress }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
    {{- end }}
    {{- with $np.extraEgress }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
{{- end }}
{{- end }}
