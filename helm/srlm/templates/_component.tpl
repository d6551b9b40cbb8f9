{{/*
A long-running srlm service: its Deployment, Service and PodDisruptionBudget.
Arguments (dict): root (the chart's context), name (promptgen | sampler | judge | trainer |
controller), values (its values section), inference (true: serves a model version, mounts
the model store read-only), input (the topic a scaled consumer reads), serviceAccount,
automountToken.
*/}}
{{- define "srlm.component" -}}
{{- $fullName := include "srlm.componentName" . -}}
{{- $autoscaled := and .values.autoscaling .values.autoscaling.enabled -}}
apiVersion: apps/v1
kind: Deployment
metadata:
  name: {{ $fullName }}
  labels:
    {{- include "srlm.labels" . | nindent 4 }}
spec:
  {{- if not $autoscaled }}
  replicas: {{ .values.replicas | default 1 }}
  {{- end }}
  revisionHistoryLimit: 5
  progressDeadlineSeconds: {{ .root.Values.progressDeadlineSeconds }}
  strategy:
    {{- if eq .name "controller" }}
    # One controller at a time: it owns the run state.
    type: Recreate
    {{- else }}
    # GPUs are scarce: replace pods one by one instead of surging an extra GPU pod.
    type: RollingUpdate
    rollingUpdate: {maxSurge: 0, maxUnavailable: 1}
    {{- end }}
  selector:
    matchLabels:
      {{- include "srlm.selectorLabels" . | nindent 6 }}
  template:
    metadata:
      labels:
        {{- include "srlm.labels" . | nindent 8 }}
      annotations:
        {{- include "srlm.podAnnotations" . | nindent 8 }}
        {{- if and .inference .root.Values.model.version }}
        srlm.dev/model-version: {{ .root.Values.model.version | quote }}
        {{- end }}
    spec:
      serviceAccountName: {{ .serviceAccount }}
      automountServiceAccountToken: {{ .automountToken }}
      enableServiceLinks: false
      terminationGracePeriodSeconds: {{ include "srlm.terminationGracePeriod" .root }}
      {{- include "srlm.podCommon" . | trim | nindent 6 }}
      containers:
        - name: {{ .name }}
          image: {{ include "srlm.image" . }}
          imagePullPolicy: {{ .root.Values.image.pullPolicy }}
          args: [serve, {{ .name }}]
          ports:
            - {name: grpc, containerPort: {{ .values.ports.grpc }}, protocol: TCP}
            - {name: metrics, containerPort: {{ .values.ports.metrics }}, protocol: TCP}
          env:
            {{- include "srlm.env" . | nindent 12 }}
            {{- if and .inference .root.Values.model.version }}
            - name: SRLM_MODEL_VERSION
              value: {{ .root.Values.model.version | quote }}
            {{- end }}
          resources:
            {{- include "srlm.componentResources" . | nindent 12 }}
          securityContext:
            {{- toYaml .root.Values.containerSecurityContext | nindent 12 }}
          {{- include "srlm.probes" . | nindent 10 }}
          volumeMounts:
            {{- include "srlm.volumeMounts" (merge (dict "modelsReadOnly" .inference) .) | nindent 12 }}
---
apiVersion: v1
kind: Service
metadata:
  name: {{ $fullName }}
  labels:
    {{- include "srlm.labels" . | nindent 4 }}
spec:
  type: ClusterIP
  selector:
    {{- include "srlm.selectorLabels" . | nindent 4 }}
  ports:
    {{- /* h2c is cleartext HTTP/2: with TLS the port speaks gRPC over TLS (https). */}}
    - {name: grpc, port: {{ .values.ports.grpc }}, targetPort: grpc, protocol: TCP, appProtocol: {{ ternary "https" "kubernetes.io/h2c" .root.Values.grpc.tls.enabled }}}
    - {name: metrics, port: {{ .values.ports.metrics }}, targetPort: metrics, protocol: TCP, appProtocol: http}
{{- if and .values.pdb .values.pdb.enabled }}
---
apiVersion: policy/v1
kind: PodDisruptionBudget
metadata:
  name: {{ $fullName }}
  labels:
    {{- include "srlm.labels" . | nindent 4 }}
spec:
  maxUnavailable: {{ .values.pdb.maxUnavailable }}
  selector:
    matchLabels:
      {{- include "srlm.selectorLabels" . | nindent 6 }}
{{- end }}
{{- if $autoscaled }}
---
# Sampler and judge are consumer-group members: KEDA adds pods while their topic lags.
apiVersion: keda.sh/v1alpha1
kind: ScaledObject
metadata:
  name: {{ $fullName }}
  labels:
    {{- include "srlm.labels" . | nindent 4 }}
spec:
  scaleTargetRef:
    name: {{ $fullName }}
  minReplicaCount: {{ .values.autoscaling.minReplicas }}
  maxReplicaCount: {{ .values.autoscaling.maxReplicas }}
  triggers:
    - type: kafka
      metadata:
        bootstrapServers: {{ join "," .root.Values.kafka.bootstrapServers | quote }}
        # srlm's stage workers: group "<prefix>-<service>" on "<prefix>.<input>".
        consumerGroup: {{ printf "%s-%s" .root.Values.kafka.topics.prefix .name | quote }}
        topic: {{ printf "%s.%s" .root.Values.kafka.topics.prefix .input | quote }}
        lagThreshold: {{ .values.autoscaling.lagThreshold | quote }}
      {{- with .values.autoscaling.authenticationRef }}
      authenticationRef:
        name: {{ . }}
      {{- end }}
{{- end }}
{{- end -}}

{{/* An inference or training service: runs under the workload ServiceAccount, no API token. */}}
{{- define "srlm.workload" -}}
{{- include "srlm.component" (dict "root" .root "name" .name "values" (get .root.Values .name)
      "inference" .inference "input" .input "serviceAccount" (include "srlm.workloadServiceAccount" .root)
      "automountToken" false) -}}
{{- end -}}

{{/* GPUs one generation engine uses: the srlm config's engine.tensor_parallel_size x
pipeline_parallel_size (vLLM's world size). The one source of the inference pods' nvidia.com/gpu. */}}
{{- define "srlm.engineGpus" -}}
{{- $engine := .Values.config.engine | default dict -}}
{{- $tp := dig "tensor_parallel_size" 1 $engine | int -}}
{{- $pp := dig "pipeline_parallel_size" 1 $engine | int -}}
{{- if or (lt $tp 1) (lt $pp 1) -}}
{{- fail "config.engine: tensor_parallel_size and pipeline_parallel_size are at least 1" -}}
{{- end -}}
{{- mul $tp $pp -}}
{{- end -}}

{{/* GPUs of one pod of a component: the engine's for a GPU inference pod, else none ("0"). */}}
{{- define "srlm.podGpus" -}}
{{- if and .inference (eq .values.imageVariant "gpu") -}}
{{- include "srlm.engineGpus" .root -}}
{{- else -}}
0
{{- end -}}
{{- end -}}

{{/* A component's container resources: its values, plus nvidia.com/gpu derived from the engine
settings in a GPU inference pod (an explicit, different count in the values is an error). */}}
{{- define "srlm.componentResources" -}}
{{- $resources := deepCopy (.values.resources | default dict) -}}
{{- $gpus := include "srlm.podGpus" . | int -}}
{{- if gt $gpus 0 -}}
{{- range $part := list "requests" "limits" -}}
{{- $section := get $resources $part | default dict -}}
{{- if and (hasKey $section "nvidia.com/gpu") (ne (get $section "nvidia.com/gpu" | int) $gpus) -}}
{{- fail (printf "%s.resources.%s.nvidia.com/gpu is %v, but config.engine gives %d GPUs per pod (tensor_parallel_size x pipeline_parallel_size): set the engine's parallelism and leave nvidia.com/gpu out" $.name $part (get $section "nvidia.com/gpu") $gpus) -}}
{{- end -}}
{{- $_ := set $section "nvidia.com/gpu" $gpus -}}
{{- $_ := set $resources $part $section -}}
{{- end -}}
{{- end -}}
{{- toYaml $resources -}}
{{- end -}}
