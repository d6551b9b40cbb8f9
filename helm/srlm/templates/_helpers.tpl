{{/* Names ------------------------------------------------------------------------- */}}

{{- define "srlm.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* "<release>-<chart>", or the release alone when it already contains the chart name. */}}
{{- define "srlm.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 40 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* A component's resource name; the prefix is cut at 40 so this stays a valid label value. */}}
{{- define "srlm.componentName" -}}
{{- printf "%s-%s" (include "srlm.fullname" .root) .name -}}
{{- end -}}

{{/* A service's Strimzi KafkaUser (and its Secret): the DPO Job logs in as the trainer. */}}
{{- define "srlm.kafkaUser" -}}
{{- printf "%s-%s" (include "srlm.fullname" .root) (.name | replace "dpo" "trainer") -}}
{{- end -}}

{{- define "srlm.controllerServiceAccount" -}}
{{- printf "%s-controller" (include "srlm.fullname" .) -}}
{{- end -}}

{{- define "srlm.workloadServiceAccount" -}}
{{- include "srlm.fullname" . -}}
{{- end -}}

{{- define "srlm.configMapName" -}}
{{- printf "%s-config" (include "srlm.fullname" .) -}}
{{- end -}}

{{- define "srlm.jobTemplateName" -}}
{{- printf "%s-dpo-job" (include "srlm.fullname" .) -}}
{{- end -}}

{{- define "srlm.claimName" -}}
{{- .Values.modelStore.existingClaim | default (printf "%s-models" (include "srlm.fullname" .)) -}}
{{- end -}}

{{/* gRPC security (values grpc.*): the Secrets every pod mounts; empty when off. */}}
{{- define "srlm.grpcTlsSecret" -}}
{{- $tls := .Values.grpc.tls -}}
{{- if $tls.enabled -}}
{{- if $tls.existingSecret -}}
{{- $tls.existingSecret -}}
{{- else if $tls.certManager.enabled -}}
{{- printf "%s-grpc-tls" (include "srlm.fullname" .) -}}
{{- else -}}
{{- fail "grpc.tls.enabled needs grpc.tls.existingSecret or grpc.tls.certManager.enabled" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "srlm.grpcAuthSecret" -}}
{{- if .Values.grpc.auth.enabled -}}
{{- .Values.grpc.auth.existingSecret | default (printf "%s-grpc-auth" (include "srlm.fullname" .)) -}}
{{- end -}}
{{- end -}}

{{/* Labels ------------------------------------------------------------------------ */}}

{{- define "srlm.selectorLabels" -}}
app.kubernetes.io/name: {{ include "srlm.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .name }}
{{- end -}}

{{- define "srlm.labels" -}}
{{ include "srlm.selectorLabels" . }}
app.kubernetes.io/part-of: srlm
app.kubernetes.io/version: {{ .root.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .root.Chart.Name .root.Chart.Version | replace "+" "_" }}
{{- end -}}

{{/* Labels of the whole release (resources that belong to no single component). */}}
{{- define "srlm.releaseLabels" -}}
{{ include "srlm.labels" (dict "root" . "name" "srlm") }}
{{- end -}}

{{/* Pods ----------------------------------------------------------------------------- */}}

{{- define "srlm.image" -}}
{{- $tag := .root.Values.image.tag | default .root.Chart.AppVersion -}}
{{- printf "%s:%s-%s" .root.Values.image.repository $tag .values.imageVariant -}}
{{- end -}}

{{/* nodeSelector, tolerations and affinity: the component's pool, then its own values. */}}
{{- define "srlm.scheduling" -}}
{{- $pool := dict "nodeSelector" dict "tolerations" list "affinity" dict -}}
{{- if .values.pool -}}
{{- $pool = get .root.Values.pools .values.pool -}}
{{- end -}}
{{- $nodeSelector := merge (deepCopy (.values.nodeSelector | default dict)) (deepCopy ($pool.nodeSelector | default dict)) -}}
{{- $tolerations := concat ($pool.tolerations | default list) (.values.tolerations | default list) -}}
{{- $affinity := .values.affinity | default $pool.affinity -}}
{{- with $nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with $tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with $affinity }}
affinity:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end -}}

{{/* Environment every srlm container gets: the config file and Kafka credentials. */}}
{{- define "srlm.env" -}}
- name: SRLM_CONFIG
  value: /etc/srlm/config.yaml
- name: POD_NAME
  valueFrom:
    fieldRef: {fieldPath: metadata.name}
- name: POD_NAMESPACE
  valueFrom:
    fieldRef: {fieldPath: metadata.namespace}
{{- if .root.Values.kafka.users.strimzi.enabled }}
{{- $user := include "srlm.kafkaUser" . }}
- name: SRLM_KAFKA__SASL_PLAIN_USERNAME
  value: {{ $user }}
- name: SRLM_KAFKA__SASL_PLAIN_PASSWORD
  valueFrom:
    secretKeyRef: {name: {{ $user }}, key: password}
{{- else if .root.Values.kafka.sasl.existingSecret }}
{{- $sasl := .root.Values.kafka.sasl }}
- name: SRLM_KAFKA__SASL_PLAIN_USERNAME
  valueFrom:
    secretKeyRef: {name: {{ $sasl.existingSecret }}, key: {{ $sasl.usernameKey }}}
- name: SRLM_KAFKA__SASL_PLAIN_PASSWORD
  valueFrom:
    secretKeyRef: {name: {{ $sasl.existingSecret }}, key: {{ $sasl.passwordKey }}}
{{- end }}
{{- with .values.extraEnv }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{- /* A multi-node group's worker (role worker) runs only Ray: no Kafka or gRPC secrets. */ -}}
{{- define "srlm.volumeMounts" -}}
{{- $serves := ne (.role | default "") "worker" -}}
- name: config
  mountPath: /etc/srlm/config.yaml
  subPath: config.yaml
  readOnly: true
- name: models
  mountPath: {{ .root.Values.modelStore.mountPath }}
  readOnly: {{ .modelsReadOnly | default false }}
- name: tmp
  mountPath: /tmp
- name: dshm
  mountPath: /dev/shm
{{- if and $serves .root.Values.kafka.tls.existingSecret }}
- name: kafka-tls
  mountPath: /etc/srlm/kafka-tls
  readOnly: true
{{- end }}
{{- if and $serves (include "srlm.grpcTlsSecret" .root) }}
- name: grpc-tls
  mountPath: /etc/srlm/grpc-tls
  readOnly: true
{{- end }}
{{- if and $serves (include "srlm.grpcAuthSecret" .root) }}
- name: grpc-auth
  mountPath: /etc/srlm/grpc-auth
  readOnly: true
{{- end }}
{{- end -}}

{{- define "srlm.volumes" -}}
{{- $serves := ne (.role | default "") "worker" -}}
- name: config
  configMap:
    name: {{ include "srlm.configMapName" .root }}
- name: models
  persistentVolumeClaim:
    claimName: {{ include "srlm.claimName" .root }}
- name: tmp
  emptyDir:
    sizeLimit: {{ .root.Values.tmpSizeLimit }}
- name: dshm
  emptyDir:
    medium: Memory
    {{- /* Larger where one engine spans several GPUs (NCCL, vLLM's worker queues) or nodes (Ray's */}}
    {{- /* object store too). A component's own shmSize (the DPO round's: trainingJob.shmSize) wins. */}}
    {{- $parallel := or (gt (include "srlm.podGpus" . | int) 1) (eq (include "srlm.multiNode" .) "true") }}
    sizeLimit: {{ .values.shmSize | default (ternary .root.Values.parallelShmSizeLimit .root.Values.shmSizeLimit $parallel) }}
{{- if $serves }}
{{- with .root.Values.kafka.tls.existingSecret }}
- name: kafka-tls
  secret:
    secretName: {{ . }}
{{- end }}
{{- with include "srlm.grpcTlsSecret" .root }}
- name: grpc-tls
  secret:
    secretName: {{ . }}
    defaultMode: 0440
{{- end }}
{{- with include "srlm.grpcAuthSecret" .root }}
- name: grpc-auth
  secret:
    secretName: {{ . }}
    defaultMode: 0440
{{- end }}
{{- end }}
{{- end -}}

{{/* Pod spec fields shared by every srlm pod (Deployments and the DPO Job). */}}
{{- define "srlm.podCommon" -}}
{{- with .root.Values.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
securityContext:
  {{- toYaml .root.Values.podSecurityContext | nindent 2 }}
{{- include "srlm.scheduling" . }}
volumes:
  {{- include "srlm.volumes" . | nindent 2 }}
{{- end -}}

{{/* Seconds between SIGTERM and SIGKILL: the srlm config's services.shutdown_deadline_s (the
service's own default, 30, when unset), within which a service hands its in-flight batch back,
plus 15 s for the gRPC drain and the process exit, so the kubelet never kills a hand-back. */}}
{{- define "srlm.terminationGracePeriod" -}}
{{- $deadline := dig "services" "shutdown_deadline_s" 30 .Values.config -}}
{{- add (ceil $deadline) 15 -}}
{{- end -}}

{{/* Pod annotations: roll the pods when the srlm config changes. */}}
{{- define "srlm.podAnnotations" -}}
checksum/config: {{ include (print .root.Template.BasePath "/configmap.yaml") .root | sha256sum }}
{{- with .values.podAnnotations }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* gRPC probes on the standard health service (grpc.health.v1). */}}
{{- define "srlm.probes" -}}
{{- $p := .root.Values.probes -}}
{{- /* kubelet's gRPC probes speak plaintext only: with TLS they use the health-only port. */ -}}
{{- $port := ternary .root.Values.grpc.tls.healthPort .values.ports.grpc .root.Values.grpc.tls.enabled -}}
startupProbe:
  grpc: {port: {{ $port }}}
  periodSeconds: {{ $p.startup.periodSeconds }}
  failureThreshold: {{ $p.startup.failureThreshold }}
livenessProbe:
  grpc: {port: {{ $port }}}
  periodSeconds: {{ $p.liveness.periodSeconds }}
  failureThreshold: {{ $p.liveness.failureThreshold }}
  timeoutSeconds: {{ $p.liveness.timeoutSeconds }}
readinessProbe:
  grpc: {port: {{ $port }}}
  periodSeconds: {{ $p.readiness.periodSeconds }}
  failureThreshold: {{ $p.readiness.failureThreshold }}
  timeoutSeconds: {{ $p.readiness.timeoutSeconds }}
{{- end -}}

{{/* A NetworkPolicy that admits a component's pods to each other on every port (for peers
that pick their ports at run time: NCCL, Ray). Arguments: root, name. */}}
{{- define "srlm.peerNetworkPolicy" -}}
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: {{ include "srlm.componentName" . }}
  labels:
    {{- include "srlm.labels" . | nindent 4 }}
spec:
  podSelector:
    matchLabels:
      {{- include "srlm.selectorLabels" . | nindent 6 }}
  policyTypes: [Ingress]
  ingress:
    - from:
        - podSelector:
            matchLabels:
              {{- include "srlm.selectorLabels" . | nindent 14 }}
{{- end -}}
