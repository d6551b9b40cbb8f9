{{/*
A long-running srlm service: its Deployment (or, for an inference service with
inference.multiNode on, its LeaderWorkerSet), Service and PodDisruptionBudget.
Arguments (dict): root (the chart's context), name (promptgen | sampler | judge | trainer |
controller), values (its values section), inference (true: serves a model version, mounts
the model store read-only), input (the topic a scaled consumer reads), serviceAccount,
automountToken.
*/}}
{{- define "srlm.component" -}}
{{- $fullName := include "srlm.componentName" . -}}
{{- $autoscaled := and .values.autoscaling .values.autoscaling.enabled -}}
{{- $multiNode := include "srlm.multiNode" . -}}
{{- if $multiNode }}
{{- $mn := .root.Values.inference.multiNode }}
apiVersion: leaderworkerset.x-k8s.io/v1
kind: LeaderWorkerSet
metadata:
  name: {{ $fullName }}
  labels:
    {{- include "srlm.labels" . | nindent 4 }}
spec:
  {{- if not $autoscaled }}
  replicas: {{ .values.replicas | default 1 }}
  {{- end }}
  # The workers start with the leader (not once it is Ready): its engine is ready only after
  # their GPUs have joined its Ray cluster.
  startupPolicy: LeaderCreated
  rolloutStrategy:
    type: RollingUpdate
    # GPUs are scarce: replace groups one by one instead of surging an extra group.
    rollingUpdateConfiguration: {maxSurge: 0, maxUnavailable: 1}
  leaderWorkerTemplate:
    size: {{ $mn.size }}
    # One engine spans the group: a pod that restarts restarts the group.
    restartPolicy: RecreateGroupOnPodRestart
    leaderTemplate:
      {{- include "srlm.podTemplate" (merge (dict "role" "leader") .) | nindent 6 }}
    workerTemplate:
      {{- include "srlm.podTemplate" (merge (dict "role" "worker") .) | nindent 6 }}
{{- else }}
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
    {{- include "srlm.podTemplate" . | nindent 4 }}
{{- end }}
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
    {{- if $multiNode }}
    # the groups' leaders: they serve srlm, the workers only lend their GPUs
    leaderworkerset.sigs.k8s.io/worker-index: "0"
    {{- end }}
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
    {{- if $multiNode }}
    apiVersion: leaderworkerset.x-k8s.io/v1
    kind: LeaderWorkerSet
    {{- end }}
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

{{/* The pod template of a component (the arguments of srlm.component, plus role: empty for a
Deployment's pod; leader or worker in a LeaderWorkerSet group). A leader starts a Ray head and
serves srlm with the engine on Ray; a worker only joins the leader's Ray cluster with its GPUs:
it needs no probes, ports, Kafka credentials or gRPC secrets. */}}
{{- define "srlm.podTemplate" -}}
{{- $role := .role | default "" -}}
{{- $serves := ne $role "worker" -}}
{{- $mn := .root.Values.inference.multiNode -}}
metadata:
  labels:
    {{- include "srlm.labels" . | nindent 4 }}
  annotations:
    {{- include "srlm.podAnnotations" . | nindent 4 }}
    {{- if and .inference .root.Values.model.version $serves }}
    srlm.dev/model-version: {{ .root.Values.model.version | quote }}
    {{- end }}
spec:
  serviceAccountName: {{ .serviceAccount }}
  automountServiceAccountToken: {{ .automountToken }}
  enableServiceLinks: false
  terminationGracePeriodSeconds: {{ include "srlm.terminationGracePeriod" .root }}
  {{- include "srlm.podCommon" . | trim | nindent 2 }}
  containers:
    - name: {{ .name }}
      image: {{ include "srlm.image" . }}
      imagePullPolicy: {{ .root.Values.image.pullPolicy }}
      {{- if eq $role "leader" }}
      command: [/bin/sh, -c]
      args:
        - >-
          ray start --head --port={{ $mn.rayPort }} --disable-usage-stats --include-dashboard=false
          && exec srlm serve {{ .name }}
      {{- else if eq $role "worker" }}
      command: [/bin/sh, -c]
      {{- /* The leader's head may not be up yet; a worker that exited would restart the group.
      LWS sets LWS_LEADER_ADDRESS. PID 1 ignores SIGTERM without a trap. */}}
      args:
        - >-
          trap 'exit 143' TERM;
          until ray health-check --address="$LWS_LEADER_ADDRESS:{{ $mn.rayPort }}" >/dev/null 2>&1;
          do sleep {{ $mn.joinRetrySeconds }}; done;
          exec ray start --block --address="$LWS_LEADER_ADDRESS:{{ $mn.rayPort }}" --disable-usage-stats
      {{- else }}
      args: [serve, {{ .name }}]
      {{- end }}
      {{- if $serves }}
      ports:
        - {name: grpc, containerPort: {{ .values.ports.grpc }}, protocol: TCP}
        - {name: metrics, containerPort: {{ .values.ports.metrics }}, protocol: TCP}
        {{- if eq $role "leader" }}
        - {name: ray, containerPort: {{ $mn.rayPort }}, protocol: TCP}
        {{- end }}
      env:
        {{- include "srlm.env" . | nindent 8 }}
        {{- if and .inference .root.Values.model.version }}
        - name: SRLM_MODEL_VERSION
          value: {{ .root.Values.model.version | quote }}
        {{- end }}
      {{- else }}
      {{- with .values.extraEnv }}
      env:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      {{- end }}
      resources:
        {{- include "srlm.componentResources" . | nindent 8 }}
      securityContext:
        {{- toYaml .root.Values.containerSecurityContext | nindent 8 }}
      {{- if $serves }}
      {{- include "srlm.probes" . | nindent 6 }}
      {{- end }}
      volumeMounts:
        {{- include "srlm.volumeMounts" (merge (dict "modelsReadOnly" .inference) .) | nindent 8 }}
{{- end -}}

{{/* "true" when a component runs as a LeaderWorkerSet: an inference service with
inference.multiNode on. Fails on a combination vLLM's multi-node mode cannot run. */}}
{{- define "srlm.multiNode" -}}
{{- $mn := .root.Values.inference.multiNode -}}
{{- if and .inference $mn.enabled -}}
{{- $engine := .root.Values.config.engine | default dict -}}
{{- if ne (dig "services" .name "kind" (dig "kind" "transformers" $engine) $engine) "vllm" -}}
{{- fail (printf "inference.multiNode.enabled needs config.engine.kind vllm for %s (or config.engine.services.%s.kind): only vLLM spans nodes" .name .name) -}}
{{- end -}}
{{- if ne (toString (dig "distributed_executor_backend" "" $engine)) "ray" -}}
{{- fail "inference.multiNode.enabled needs config.engine.distributed_executor_backend ray: vLLM reaches the GPUs of other nodes only through a Ray cluster" -}}
{{- end -}}
{{- if ne .values.imageVariant "gpu" -}}
{{- fail (printf "inference.multiNode.enabled needs %s.imageVariant gpu (vLLM's CPU build runs on one node)" .name) -}}
{{- end -}}
{{- $world := include "srlm.engineGpus" .root | int -}}
{{- if or (lt $world (int $mn.size)) (mod $world (int $mn.size)) -}}
{{- fail (printf "config.engine's tensor_parallel_size x pipeline_parallel_size (%d GPUs) must split evenly over the inference.multiNode.size of %d pods: every pod of a group gets the same GPUs" $world (int $mn.size)) -}}
{{- end -}}
true
{{- end -}}
{{- end -}}

{{/* The inference services' workload names as JSON, {deployments: [...], leaderWorkerSets: [...]}:
what a promotion rolls out (the srlm config's kubernetes section) and what the controller's
Role lets it patch. */}}
{{- define "srlm.inferenceWorkloads" -}}
{{- $out := dict "deployments" list "leaderWorkerSets" list -}}
{{- range $name := list "promptgen" "sampler" "judge" -}}
{{- $ctx := dict "root" $ "name" $name "values" (get $.Values $name) "inference" true -}}
{{- $kind := ternary "leaderWorkerSets" "deployments" (eq (include "srlm.multiNode" $ctx) "true") -}}
{{- $_ := set $out $kind (append (get $out $kind) (include "srlm.componentName" $ctx)) -}}
{{- end -}}
{{- toJson $out -}}
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

{{/* GPUs of one pod of a component: the engine's for a GPU inference pod (its share of them
in a multi-node group), else none ("0"). */}}
{{- define "srlm.podGpus" -}}
{{- if and .inference (eq .values.imageVariant "gpu") -}}
{{- $gpus := include "srlm.engineGpus" .root | int -}}
{{- if include "srlm.multiNode" . -}}
{{- $gpus = div $gpus (int .root.Values.inference.multiNode.size) -}}
{{- end -}}
{{- $gpus -}}
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
