{{/*
Names, labels, the per-target TOML and the checks that refuse values which cannot work.
*/}}

{{/* The targets in a fixed order (the gateway first); every one is a key of .Values.targets. */}}
{{- define "ehr.targetNames" -}}
gateway patient-record orders lab-interface data-export clins-adapter eprescription-adapter
{{- end -}}

{{/* The service targets (every target but the gateway): what the gateway routes to. */}}
{{- define "ehr.serviceNames" -}}
patient-record orders lab-interface data-export clins-adapter eprescription-adapter
{{- end -}}

{{- define "ehr.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* <release>-<chart>, or the release name when it already contains the chart name. At most 41
characters, so that "<fullname>-eprescription-adapter" is still a DNS label. */}}
{{- define "ehr.fullname" -}}
{{- $name := "" -}}
{{- if .Values.fullnameOverride -}}
{{- $name = .Values.fullnameOverride -}}
{{- else -}}
{{- $chart := default .Chart.Name .Values.nameOverride -}}
{{- if contains $chart .Release.Name -}}
{{- $name = .Release.Name -}}
{{- else -}}
{{- $name = printf "%s-%s" .Release.Name $chart -}}
{{- end -}}
{{- end -}}
{{- if gt (len $name) 41 -}}
{{- fail (printf "the resource name prefix %q is longer than 41 characters: choose a shorter release name or set fullnameOverride" $name) -}}
{{- end -}}
{{- $name -}}
{{- end -}}

{{/* The name of a target's resources: <fullname>-<target>. Argument: dict root, target. */}}
{{- define "ehr.componentName" -}}
{{- printf "%s-%s" (include "ehr.fullname" .root) .target -}}
{{- end -}}

{{- define "ehr.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "ehr.imageTag" -}}
{{- default .Chart.AppVersion .Values.image.tag -}}
{{- end -}}

{{- define "ehr.image" -}}
{{- if .Values.image.digest -}}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest -}}
{{- else -}}
{{- printf "%s:%s" .Values.image.repository (include "ehr.imageTag" .) -}}
{{- end -}}
{{- end -}}

{{/* Selector labels of a component. Argument: dict root, component. */}}
{{- define "ehr.selectorLabels" -}}
app.kubernetes.io/name: {{ include "ehr.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{/* The Kubernetes recommended labels. Argument: dict root, component. */}}
{{- define "ehr.labels" -}}
{{ include "ehr.selectorLabels" . }}
app.kubernetes.io/version: {{ regexReplaceAll "[^-A-Za-z0-9_.]" (include "ehr.imageTag" .root) "_" | trunc 63 | trimSuffix "-" | quote }}
app.kubernetes.io/part-of: ehr
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
helm.sh/chart: {{ include "ehr.chart" .root }}
{{- end -}}

{{- define "ehr.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "ehr.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* The issuer the gateway signs with and every service trusts. */}}
{{- define "ehr.issuer" -}}
{{- .Values.issuer | default .Values.publicUrl | default "urn:ehr:gateway" -}}
{{- end -}}

{{/* Where the secrets are mounted and the file name of each. */}}
{{- define "ehr.secretDir" -}}/run/secrets/ehr{{- end -}}

{{/* The Secret holding one of the four secrets: "name key" of a chart-made or an existing Secret.
Argument: dict root, which (gatewayDatabase, clinicalDatabase, redis, secretKey). */}}
{{- define "ehr.secretRef" -}}
{{- $v := .root.Values -}}
{{- $src := dict -}}
{{- $value := "" -}}
{{- $chartKey := "" -}}
{{- $path := "" -}}
{{- if eq .which "gatewayDatabase" -}}
{{- $src = $v.database.gateway -}}{{- $value = $src.url -}}{{- $chartKey = "gateway-database-url" -}}{{- $path = "database.gateway" -}}
{{- else if eq .which "clinicalDatabase" -}}
{{- $src = $v.database.clinical -}}{{- $value = $src.url -}}{{- $chartKey = "clinical-database-url" -}}{{- $path = "database.clinical" -}}
{{- else if eq .which "redis" -}}
{{- $src = $v.redis -}}{{- $value = $src.url -}}{{- $chartKey = "redis-url" -}}{{- $path = "redis" -}}
{{- else if eq .which "secretKey" -}}
{{- $src = $v.gatewaySecretKey -}}{{- $value = $src.value -}}{{- $chartKey = "gateway-secret-key" -}}{{- $path = "gatewaySecretKey" -}}
{{- else -}}
{{- fail (printf "internal: unknown secret %s" .which) -}}
{{- end -}}
{{- if $value -}}
{{- printf "%s-secrets %s" (include "ehr.fullname" .root) $chartKey -}}
{{- else if $src.existingSecret -}}
{{- printf "%s %s" $src.existingSecret (required (printf "%s.existingSecretKey is required" $path) $src.existingSecretKey) -}}
{{- else -}}
{{- fail (printf "%s: set %s or %s.existingSecret" $path (ternary (printf "%s.value" $path) (printf "%s.url" $path) (eq .which "secretKey")) $path) -}}
{{- end -}}
{{- end -}}

{{/* The value of one of the four secrets when the chart stores it, else "". Argument: dict
root, which. */}}
{{- define "ehr.secretValue" -}}
{{- $v := .root.Values -}}
{{- if eq .which "gatewayDatabase" -}}{{ $v.database.gateway.url }}
{{- else if eq .which "clinicalDatabase" -}}{{ $v.database.clinical.url }}
{{- else if eq .which "redis" -}}{{ $v.redis.url }}
{{- else if eq .which "secretKey" -}}{{ $v.gatewaySecretKey.value }}
{{- end -}}
{{- end -}}

{{/* A checksum of the Secrets a target mounts: their names and keys, and the values the chart
stores. Argument: dict root, target. */}}
{{- define "ehr.secretsChecksum" -}}
{{- $parts := list -}}
{{- range (splitList " " (include "ehr.targetSecrets" .)) -}}
{{- $which := index (splitList ":" .) 0 -}}
{{- $parts = append $parts (include "ehr.secretRef" (dict "root" $.root "which" $which)) -}}
{{- $parts = append $parts (include "ehr.secretValue" (dict "root" $.root "which" $which)) -}}
{{- end -}}
{{- join "|" $parts | sha256sum -}}
{{- end -}}

{{/* The secrets a target mounts: a list of "which file" pairs. Argument: dict root, target. */}}
{{- define "ehr.targetSecrets" -}}
{{- if eq .target "gateway" -}}
gatewayDatabase:database-url redis:redis-url secretKey:secret-key
{{- else -}}
clinicalDatabase:database-url redis:redis-url
{{- end -}}
{{- end -}}

{{/* The projected volume of a target's secrets. Argument: dict root, target. */}}
{{- define "ehr.secretsVolume" -}}
- name: secrets
  projected:
    defaultMode: 0440
    sources:
{{- range (splitList " " (include "ehr.targetSecrets" .)) }}
{{- $pair := splitList ":" . }}
{{- $ref := splitList " " (include "ehr.secretRef" (dict "root" $.root "which" (index $pair 0))) }}
      - secret:
          name: {{ index $ref 0 }}
          items:
            - key: {{ index $ref 1 | quote }}
              path: {{ index $pair 1 }}
{{- end }}
{{- end -}}

{{/* Whether the target is enabled ("true" or ""). Argument: dict root, target. */}}
{{- define "ehr.enabled" -}}
{{- if (index .root.Values.targets .target).enabled -}}true{{- end -}}
{{- end -}}

{{/* The HTTP base URL of a target's Service inside the cluster. Argument: dict root, target. */}}
{{- define "ehr.serviceUrl" -}}
{{- printf "http://%s:8080" (include "ehr.componentName" .) -}}
{{- end -}}

{{/* The keys of the TOML the chart writes itself, with the value that sets each: a key in
`config` or `targets.<name>.config` that is one of them, or inside one of them, is refused. */}}
{{- define "ehr.wiredKeys" -}}
listen: "(fixed: 0.0.0.0:8080)"
public_url: publicUrl
data_dir: "(unused by the service targets)"
database.url: database.gateway / database.clinical
database.url_file: database.gateway / database.clinical
auth: issuer
gateway.issuer: issuer
gateway.redis_url: redis
gateway.redis_url_file: redis
gateway.redis_prefix: redis.prefix
gateway.secret_key: gatewaySecretKey
gateway.secret_key_file: gatewaySecretKey
gateway.upstreams: "targets.<name>.enabled"
telemetry.otlp_endpoint: telemetry.otlpEndpoint
telemetry.sample_ratio: telemetry.sampleRatio
telemetry.trust_incoming_traceparent: telemetry.trustIncomingTraceparent
telemetry.metrics_listen: metrics
shutdown.drain_secs: shutdown.drainSecs
shutdown.workers_timeout_secs: shutdown.workersTimeoutSecs
shutdown.requests_timeout_secs: shutdown.requestsTimeoutSecs
lab.listen: targets.lab-interface.mllp
lab.file_root: targets.lab-interface.fileRoot
export.root: targets.data-export.persistence
{{- end -}}

{{/* Fails when a user config sets a key the chart writes. Argument: dict config, where. */}}
{{- define "ehr.checkWiredKeys" -}}
{{- $cfg := .config | default dict -}}
{{- $where := .where -}}
{{- range $path, $instead := (include "ehr.wiredKeys" . | fromYaml) -}}
{{- $parts := splitList "." $path -}}
{{- $first := index $parts 0 -}}
{{- if hasKey $cfg $first -}}
{{- if eq (len $parts) 1 -}}
{{- fail (printf "%s.%s is written by the chart: set %s instead" $where $path $instead) -}}
{{- else -}}
{{- $table := index $cfg $first -}}
{{- if and (kindIs "map" $table) (hasKey $table (index $parts 1)) -}}
{{- fail (printf "%s.%s is written by the chart: set %s instead" $where $path $instead) -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* Merges the map .src into the map .dst (in place): maps recursively, anything else replaced. */}}
{{- define "ehr.deepMerge" -}}
{{- $dst := .dst -}}
{{- range $k, $v := (.src | default dict) -}}
{{- $cur := index $dst $k -}}
{{- if and (kindIs "map" $v) (kindIs "map" $cur) -}}
{{- include "ehr.deepMerge" (dict "dst" $cur "src" $v) -}}
{{- else -}}
{{- $_ := set $dst $k $v -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* The settings the chart writes for a target (YAML). Argument: dict root, target. */}}
{{- define "ehr.wiring" -}}
{{- $v := .root.Values -}}
{{- $t := index $v.targets .target -}}
{{- $dir := include "ehr.secretDir" . -}}
listen: "0.0.0.0:8080"
{{- with $v.publicUrl }}
public_url: {{ . | toJson }}
{{- end }}
database:
  url_file: {{ printf "%s/database-url" $dir | toJson }}
auth:
  development_key: false
{{- if ne .target "gateway" }}
  issuer: {{ include "ehr.issuer" .root | toJson }}
  jwks_url: {{ printf "%s/.well-known/jwks.json" (include "ehr.serviceUrl" (dict "root" .root "target" "gateway")) | toJson }}
{{- end }}
gateway:
  redis_url_file: {{ printf "%s/redis-url" $dir | toJson }}
  redis_prefix: {{ $v.redis.prefix | toJson }}
{{- if eq .target "gateway" }}
  issuer: {{ include "ehr.issuer" .root | toJson }}
  secret_key_file: {{ printf "%s/secret-key" $dir | toJson }}
  upstreams:
{{- range (splitList " " (include "ehr.serviceNames" .)) }}
{{- if include "ehr.enabled" (dict "root" $.root "target" .) }}
    {{ . }}: {{ include "ehr.serviceUrl" (dict "root" $.root "target" .) | toJson }}
{{- end }}
{{- end }}
{{- end }}
telemetry:
  sample_ratio: {{ $v.telemetry.sampleRatio }}
  trust_incoming_traceparent: {{ $v.telemetry.trustIncomingTraceparent | default false }}
{{- with $v.telemetry.otlpEndpoint }}
  otlp_endpoint: {{ . | toJson }}
{{- end }}
{{- if $v.metrics.enabled }}
  metrics_listen: {{ printf "0.0.0.0:%d" (int $v.metrics.port) | toJson }}
{{- end }}
shutdown:
  drain_secs: {{ int $v.shutdown.drainSecs }}
  workers_timeout_secs: {{ int $v.shutdown.workersTimeoutSecs }}
  requests_timeout_secs: {{ int $v.shutdown.requestsTimeoutSecs }}
{{- if eq .target "lab-interface" }}
lab:
  file_root: "/var/lib/ehr/lab-files"
{{- if $t.mllp.enabled }}
  listen: {{ printf "0.0.0.0:%d" (int $t.mllp.port) | toJson }}
{{- end }}
{{- end }}
{{- if eq .target "data-export" }}
export:
  root: "/var/lib/ehr/exports"
{{- end }}
{{- end -}}

{{/* A TOML key: bare when it can be, else quoted. */}}
{{- define "ehr.tomlKey" -}}
{{- if regexMatch "^[A-Za-z0-9_-]+$" . -}}{{ . }}{{- else -}}{{ toJson . }}{{- end -}}
{{- end -}}

{{/* A TOML value: string, boolean, number (whole numbers as integers: YAML numbers arrive as
floats, and the server's integer keys refuse 16.0), or an array of those. */}}
{{- define "ehr.tomlValue" -}}
{{- if kindIs "string" . -}}
{{- toJson . -}}
{{- else if kindIs "bool" . -}}
{{- ternary "true" "false" . -}}
{{- else if or (kindIs "float64" .) (kindIs "float32" .) -}}
{{- if eq (float64 .) (floor .) -}}{{ int64 . }}{{- else -}}{{ . }}{{- end -}}
{{- else if or (kindIs "int" .) (kindIs "int64" .) (kindIs "int32" .) (kindIs "uint64" .) -}}
{{- . -}}
{{- else if kindIs "slice" . -}}
[{{- range $i, $e := . -}}{{- if $i }}, {{ end -}}{{- if or (kindIs "map" $e) (kindIs "slice" $e) -}}{{- fail "config: arrays of tables or nested arrays are not supported; use a table" -}}{{- end -}}{{- include "ehr.tomlValue" $e -}}{{- end -}}]
{{- else -}}
{{- fail (printf "config: cannot write %v (%s) as TOML" . (kindOf .)) -}}
{{- end -}}
{{- end -}}

{{/* A map as TOML: its plain keys, then its tables. Argument: dict table, path. */}}
{{- define "ehr.toml" -}}
{{- $path := .path -}}
{{- range $k, $v := .table }}
{{- if and (not (kindIs "map" $v)) (not (kindIs "invalid" $v)) }}
{{ include "ehr.tomlKey" $k }} = {{ include "ehr.tomlValue" $v }}
{{- end }}
{{- end }}
{{- range $k, $v := .table }}
{{- if kindIs "map" $v }}
{{- $sub := include "ehr.tomlKey" $k }}
{{- if $path }}{{ $sub = printf "%s.%s" $path $sub }}{{ end }}

[{{ $sub }}]
{{- include "ehr.toml" (dict "table" $v "path" $sub) }}
{{- end }}
{{- end }}
{{- end -}}

{{/* The TOML configuration of a target: `config`, then `targets.<name>.config`, then what the
chart writes. Argument: dict root, target. */}}
{{- define "ehr.configToml" -}}
{{- $v := .root.Values -}}
{{- $t := index $v.targets .target -}}
{{- include "ehr.checkWiredKeys" (dict "config" $v.config "where" "config") -}}
{{- include "ehr.checkWiredKeys" (dict "config" $t.config "where" (printf "targets.%s.config" .target)) -}}
{{- $cfg := dict -}}
{{- include "ehr.deepMerge" (dict "dst" $cfg "src" (deepCopy ($v.config | default dict))) -}}
{{- include "ehr.deepMerge" (dict "dst" $cfg "src" (deepCopy ($t.config | default dict))) -}}
{{- include "ehr.deepMerge" (dict "dst" $cfg "src" (include "ehr.wiring" . | fromYaml)) -}}
# ehr serve --target {{ .target }} --config /etc/ehr/ehr.toml
# Written by the Helm chart (release {{ .root.Release.Name }}); keys: docs/operations/README.md.
# The secrets are files under {{ include "ehr.secretDir" . }}, mounted from Secrets.
{{ include "ehr.toml" (dict "table" $cfg "path" "") }}
{{ end -}}

{{/* terminationGracePeriodSeconds of a target: set, or drain + requests in flight + workers (+ the
gateway's 30 s audit flush) + margin. Argument: dict root, target. */}}
{{- define "ehr.gracePeriod" -}}
{{- $v := .root.Values -}}
{{- $t := index $v.targets .target -}}
{{- $floor := add (int $v.shutdown.drainSecs) (int $v.shutdown.requestsTimeoutSecs) (int $v.shutdown.workersTimeoutSecs) -}}
{{- if eq .target "gateway" -}}{{- $floor = add $floor 30 -}}{{- end -}}
{{- if kindIs "invalid" $t.terminationGracePeriodSeconds -}}
{{- add $floor (int $v.shutdown.graceMarginSecs) -}}
{{- else if le (int $t.terminationGracePeriodSeconds) $floor -}}
{{- fail (printf "targets.%s.terminationGracePeriodSeconds (%d) must exceed %d s: shutdown.drainSecs + shutdown.requestsTimeoutSecs + shutdown.workersTimeoutSecs%s" .target (int $t.terminationGracePeriodSeconds) $floor (ternary " + the audit flush (30 s)" "" (eq .target "gateway"))) -}}
{{- else -}}
{{- int $t.terminationGracePeriodSeconds -}}
{{- end -}}
{{- end -}}

{{/* The most replicas a target can have. Argument: the target's values. */}}
{{- define "ehr.maxReplicas" -}}
{{- if .autoscaling.enabled -}}{{ int .autoscaling.maxReplicas }}{{- else -}}{{ int .replicas }}{{- end -}}
{{- end -}}

{{/* Refuses combinations of values that cannot work. */}}
{{- define "ehr.validate" -}}
{{- $v := .Values -}}
{{- $anyService := false -}}
{{- range (splitList " " (include "ehr.serviceNames" .)) -}}
{{- if (index $v.targets .).enabled -}}{{- $anyService = true -}}{{- end -}}
{{- end -}}
{{- if and $anyService (not $v.targets.gateway.enabled) -}}
{{- fail "targets.gateway.enabled=false: the services verify tokens with the gateway's JWKS and are reached through it; enable the gateway" -}}
{{- end -}}
{{- if and $v.targets.gateway.enabled (not (index $v.targets "patient-record").enabled) -}}
{{- fail "targets.patient-record.enabled=false: the gateway requires the patient-record service (gateway.upstreams.patient-record)" -}}
{{- end -}}
{{- range $name := (splitList " " (include "ehr.targetNames" .)) -}}
{{- $t := index $v.targets $name -}}
{{- if and $t.enabled $t.autoscaling.enabled (lt (int $t.autoscaling.maxReplicas) (int $t.autoscaling.minReplicas)) -}}
{{- fail (printf "targets.%s.autoscaling.maxReplicas (%d) is below minReplicas (%d)" $name (int $t.autoscaling.maxReplicas) (int $t.autoscaling.minReplicas)) -}}
{{- end -}}
{{- end -}}
{{- $export := index $v.targets "data-export" -}}
{{- if and $export.enabled (gt (int (include "ehr.maxReplicas" $export)) 1) -}}
{{- if not $export.persistence.enabled -}}
{{- fail "targets.data-export: more than one replica needs persistence.enabled (a ReadWriteMany volume shared by the replicas: export.root)" -}}
{{- end -}}
{{- if and (not $export.persistence.existingClaim) (not (has "ReadWriteMany" $export.persistence.accessModes)) -}}
{{- fail "targets.data-export: more than one replica needs persistence.accessModes [ReadWriteMany] (export.root is shared by the replicas)" -}}
{{- end -}}
{{- end -}}
{{- if $v.gatewaySecretKey.value -}}
{{- if ne (len (b64dec $v.gatewaySecretKey.value)) 32 -}}
{{- fail "gatewaySecretKey.value must be base64 of 32 random bytes (openssl rand -base64 32)" -}}
{{- end -}}
{{- end -}}
{{- if $v.networkPolicy.enabled -}}
{{- range $name := list "postgresql" "redis" -}}
{{- $np := index $v.networkPolicy $name -}}
{{- if and (empty $np.cidrs) (empty $np.peers) -}}
{{- fail (printf "networkPolicy.%s: set cidrs or peers (every target connects to it)" $name) -}}
{{- end -}}
{{- end -}}
{{- if and $v.telemetry.otlpEndpoint (empty $v.networkPolicy.otlp.cidrs) (empty $v.networkPolicy.otlp.peers) -}}
{{- fail "networkPolicy.otlp: set cidrs or peers (telemetry.otlpEndpoint is set)" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* The egress rule to a list of CIDRs and peers on ports (TCP). Argument: dict cidrs, peers,
ports. Empty ports: any port. */}}
{{- define "ehr.egressRule" -}}
- to:
{{- range .cidrs }}
    - ipBlock:
        cidr: {{ . | quote }}
{{- end }}
{{- with .peers }}
{{- toYaml . | nindent 4 }}
{{- end }}
{{- with .ports }}
  ports:
{{- range . }}
    - protocol: TCP
      port: {{ int . }}
{{- end }}
{{- end }}
{{- end -}}
