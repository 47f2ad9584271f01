{{/* Chart name, overridable with nameOverride. */}}
{{- define "keygate.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/*
Fully qualified app name: <release>-keygate, or the release name alone when it
already contains the chart name. Truncated to 63 characters (DNS label limit).
*/}}
{{- define "keygate.fullname" -}}
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

{{- define "keygate.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/*
Selector of the serving pods. The component label keeps the migration Job's
pod out of the Service, the PodDisruptionBudget and the NetworkPolicy.
*/}}
{{- define "keygate.selectorLabels" -}}
app.kubernetes.io/name: {{ include "keygate.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: server
{{- end -}}

{{- define "keygate.commonLabels" -}}
helm.sh/chart: {{ include "keygate.chart" . }}
app.kubernetes.io/name: {{ include "keygate.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Values.image.tag | default .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: keygate
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* Labels of the serving objects. */}}
{{- define "keygate.labels" -}}
{{ include "keygate.commonLabels" . }}
app.kubernetes.io/component: server
{{- end -}}

{{/* Labels of the migration hook's objects. */}}
{{- define "keygate.migrationLabels" -}}
{{ include "keygate.commonLabels" . }}
app.kubernetes.io/component: migration
{{- end -}}

{{- define "keygate.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "keygate.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "keygate.image" -}}
{{- if .Values.image.digest -}}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest -}}
{{- else -}}
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion) -}}
{{- end -}}
{{- end -}}

{{/* Name of the Secret holding the database URL and admin token hashes. */}}
{{- define "keygate.secretName" -}}
{{- default (include "keygate.fullname" .) .Values.secrets.existingSecret -}}
{{- end -}}

{{/*
Checks that must stop rendering. Included by every workload template so that
`helm template` and `helm install` both refuse a release that cannot start.
*/}}
{{- define "keygate.validate" -}}
{{- if not .Values.secrets.existingSecret -}}
{{- if not .Values.secrets.databaseUrl -}}
{{- fail "keygate: a database is required: set secrets.databaseUrl, or secrets.existingSecret naming a Secret with the database URL and admin token hashes" -}}
{{- end -}}
{{- if not (include "keygate.adminTokens" .) -}}
{{- fail "keygate: secrets.adminTokens is required: the admin listener binds 0.0.0.0 and keygate refuses a non-loopback admin bind without tokens (print one with `keygate admin-token`)" -}}
{{- end -}}
{{- end -}}
{{- with .Values.rateLimits.redis -}}
{{- if and .enabled (not .url) (not .existingSecret) -}}
{{- fail "keygate: rateLimits.redis.enabled needs rateLimits.redis.url (redis://…) or rateLimits.redis.existingSecret" -}}
{{- end -}}
{{- end -}}
{{- if and .Values.config.githubScanningKeysConfigMap (not .Values.rest.enabled) -}}
{{- fail "keygate: config.githubScanningKeysConfigMap needs rest.enabled (leak reports arrive on the REST listener)" -}}
{{- end -}}
{{- if and .Values.tls.enabled (not .Values.tls.secretName) -}}
{{- fail "keygate: tls.enabled needs tls.secretName (a kubernetes.io/tls Secret)" -}}
{{- end -}}
{{- if and .Values.tls.clientCaSecretName (not .Values.tls.enabled) -}}
{{- fail "keygate: tls.clientCaSecretName needs tls.enabled" -}}
{{- end -}}
{{- if and .Values.tls.authzClientCaSecretName (not .Values.tls.enabled) -}}
{{- fail "keygate: tls.authzClientCaSecretName needs tls.enabled (mutual TLS on Check needs keygate's own certificate, tls.secretName)" -}}
{{- end -}}
{{- /* Every listener binds its own port: 0.0.0.0:N and 127.0.0.1:N collide too. */ -}}
{{- $listeners := dict -}}
{{- $_ := set $listeners "containerPorts.authz" .Values.containerPorts.authz -}}
{{- $_ := set $listeners "containerPorts.admin" .Values.containerPorts.admin -}}
{{- $_ := set $listeners "containerPorts.metrics" .Values.containerPorts.metrics -}}
{{- $_ := set $listeners "rest.containerPort" (ternary .Values.rest.containerPort 8080 .Values.rest.enabled) -}}
{{- $_ := set $listeners "forwardAuth.containerPort" .Values.forwardAuth.containerPort -}}
{{- $seen := dict -}}
{{- range $name := keys $listeners | sortAlpha -}}
{{- $port := toString (int (get $listeners $name)) -}}
{{- if hasKey $seen $port -}}
{{- fail (printf "keygate: %s and %s are both port %s; each listener needs its own port (a disabled REST listener still binds 127.0.0.1:8080)" (get $seen $port) $name $port) -}}
{{- end -}}
{{- $_ := set $seen $port $name -}}
{{- end -}}
{{- $servicePorts := dict "service.ports.authz" .Values.service.ports.authz "service.ports.admin" .Values.service.ports.admin "service.ports.metrics" .Values.service.ports.metrics -}}
{{- if .Values.rest.enabled -}}
{{- $_ := set $servicePorts "rest.servicePort" .Values.rest.servicePort -}}
{{- end -}}
{{- if .Values.forwardAuth.enabled -}}
{{- $_ := set $servicePorts "forwardAuth.servicePort" .Values.forwardAuth.servicePort -}}
{{- end -}}
{{- $seen = dict -}}
{{- range $name := keys $servicePorts | sortAlpha -}}
{{- $port := toString (int (get $servicePorts $name)) -}}
{{- if hasKey $seen $port -}}
{{- fail (printf "keygate: %s and %s are both Service port %s; each needs its own" (get $seen $port) $name $port) -}}
{{- end -}}
{{- $_ := set $seen $port $name -}}
{{- end -}}
{{- $grace := include "keygate.durationSeconds" .Values.config.shutdownGrace | atoi -}}
{{- $drain := add $grace (int .Values.lifecycle.preStopSleepSeconds) -}}
{{- if le (int .Values.terminationGracePeriodSeconds) $drain -}}
{{- fail (printf "keygate: terminationGracePeriodSeconds (%d) must be greater than lifecycle.preStopSleepSeconds + config.shutdownGrace (%d s), or pods are killed before their final usage flush" (int .Values.terminationGracePeriodSeconds) $drain) -}}
{{- end -}}
{{- $pdb := .Values.podDisruptionBudget -}}
{{- if and $pdb.enabled (not (kindIs "invalid" $pdb.minAvailable)) (not (kindIs "invalid" $pdb.maxUnavailable)) -}}
{{- fail "keygate: set only one of podDisruptionBudget.minAvailable and podDisruptionBudget.maxUnavailable" -}}
{{- end -}}
{{- if and .Values.autoscaling.enabled (lt (int .Values.autoscaling.maxReplicas) (int .Values.autoscaling.minReplicas)) -}}
{{- fail "keygate: autoscaling.maxReplicas must be at least autoscaling.minReplicas" -}}
{{- end -}}
{{- end -}}

{{/* A duration like 250ms, 25s, 5m or 1h, in whole seconds (rounded up). */}}
{{- define "keygate.durationSeconds" -}}
{{- $d := toString . -}}
{{- $n := regexFind "^[0-9]+" $d | atoi -}}
{{- $unit := regexFind "(ms|s|m|h)$" $d -}}
{{- if eq $unit "ms" -}}{{ div (add $n 999) 1000 }}
{{- else if eq $unit "s" -}}{{ $n }}
{{- else if eq $unit "m" -}}{{ mul $n 60 }}
{{- else if eq $unit "h" -}}{{ mul $n 3600 }}
{{- else -}}{{ fail (printf "keygate: %q is not a duration like 25s" $d) }}
{{- end -}}
{{- end -}}

{{/* Admin token entries as one comma-separated string, from a string or a list. */}}
{{- define "keygate.adminTokens" -}}
{{- $t := .Values.secrets.adminTokens -}}
{{- if kindIs "slice" $t -}}
{{- join "," $t -}}
{{- else -}}
{{- $t | default "" | toString -}}
{{- end -}}
{{- end -}}

{{/*
Non-secret keygate settings as a YAML map of KEYGATE_* names to strings. The
ConfigMap renders it as data and the migration Job as env, so both run with
the same configuration.
*/}}
{{- define "keygate.configData" -}}
{{- $c := .Values.config -}}
{{- $p := .Values.containerPorts -}}
{{- $env := dict
  "KEYGATE_AUTHZ_ADDR" (printf "0.0.0.0:%d" (int $p.authz))
  "KEYGATE_ADMIN_ADDR" (printf "0.0.0.0:%d" (int $p.admin))
  "KEYGATE_METRICS_ADDR" (printf "0.0.0.0:%d" (int $p.metrics))
  "KEYGATE_LOG_FORMAT" $c.logFormat
  "KEYGATE_KEY_PREFIX" $c.keyPrefix
  "KEYGATE_ENVIRONMENTS" (join "," $c.environments)
  "KEYGATE_TOKEN_LENGTH" (toString (int $c.tokenLength))
  "KEYGATE_MAX_KEYS_PER_OWNER" (toString (int $c.maxKeysPerOwner))
  "KEYGATE_CACHE_TTL" $c.cacheTtl
  "KEYGATE_NEGATIVE_CACHE_TTL" $c.negativeCacheTtl
  "KEYGATE_USAGE_FLUSH_INTERVAL" $c.usageFlushInterval
  "KEYGATE_USAGE_BATCH_SIZE" (toString (int $c.usageBatchSize))
  "KEYGATE_USAGE_BUFFER" (toString (int $c.usageBuffer))
  "KEYGATE_FOREIGN_BEARER" $c.foreignBearer
  "KEYGATE_MIGRATE_ON_START" (toString $c.migrateOnStart)
  "KEYGATE_SHUTDOWN_GRACE" $c.shutdownGrace
  "KEYGATE_USAGE_LOG_ENABLED" (toString $c.usageLogEnabled)
  "KEYGATE_USAGE_LOG_RETENTION_DAYS" (toString (int $c.usageLogRetentionDays))
  "KEYGATE_RATE_LIMIT_TIMEOUT" .Values.rateLimits.timeout
  "KEYGATE_RATE_LIMIT_PREFIX" .Values.rateLimits.prefix
  "KEYGATE_CREDIT_LEASE" (toString (int .Values.rateLimits.creditLease))
  "KEYGATE_WEBHOOKS_ENABLED" (toString $c.webhooksEnabled)
  "KEYGATE_WEBHOOK_TIMEOUT" $c.webhookTimeout
  "KEYGATE_WEBHOOK_RETRY_FOR" $c.webhookRetryFor
  "KEYGATE_EXPIRY_WARNINGS" (join "," $c.expiryWarnings)
  "KEYGATE_WEBHOOK_ALLOW_PRIVATE" (toString $c.webhookAllowPrivate)
  "KEYGATE_WEBHOOK_ALLOW_HTTP" (toString $c.webhookAllowHttp)
  "KEYGATE_DORMANT_AFTER" $c.dormantAfter
  "KEYGATE_LEAK_ACTION" $c.leakAction
-}}
{{- with $c.abilities -}}
{{- $_ := set $env "KEYGATE_ABILITIES" (join "," .) -}}
{{- end -}}
{{- with $c.importedPrefixes -}}
{{- $_ := set $env "KEYGATE_IMPORTED_PREFIXES" (join "," .) -}}
{{- end -}}
{{- if .Values.rest.enabled -}}
{{- $_ := set $env "KEYGATE_HTTP_ADDR" (printf "0.0.0.0:%d" (int .Values.rest.containerPort)) -}}
{{- end -}}
{{- /*
keygate's own default for the forward-auth listener is 0.0.0.0:8081, so when
it is off the chart binds it on the pod's loopback, out of reach (the REST
listener's own default, 127.0.0.1:8080, already is).
*/ -}}
{{- $fwd := .Values.forwardAuth -}}
{{- $_ := set $env "KEYGATE_FORWARD_AUTH_ADDR" (printf "%s:%d" (ternary "0.0.0.0" "127.0.0.1" $fwd.enabled) (int $fwd.containerPort)) -}}
{{- with $fwd.pathPrefix -}}
{{- $_ := set $env "KEYGATE_FORWARD_AUTH_PATH_PREFIX" . -}}
{{- end -}}
{{- $reserved := list "KEYGATE_DATABASE_URL" "KEYGATE_DATABASE_URL_FILE" "KEYGATE_ADMIN_TOKENS" "KEYGATE_ADMIN_TOKENS_FILE" "KEYGATE_TLS_CERT" "KEYGATE_TLS_KEY" "KEYGATE_ADMIN_CLIENT_CA" "KEYGATE_AUTHZ_CLIENT_CA" "KEYGATE_HTTP_ADDR" "KEYGATE_FORWARD_AUTH_PATH_PREFIX" "KEYGATE_CONFIG" "KEYGATE_RATE_LIMIT_STORE" -}}
{{- range $k, $v := $c.extraEnv -}}
{{- if or (hasKey $env $k) (has $k $reserved) -}}
{{- fail (printf "keygate: config.extraEnv cannot set %s: it has its own value (config.*, secrets.*, tls.*, rest.* or forwardAuth.*)" $k) -}}
{{- end -}}
{{- $_ := set $env $k (toString $v) -}}
{{- end -}}
{{- range $k := keys $env | sortAlpha }}
{{ $k }}: {{ get $env $k | quote }}
{{- end -}}
{{- end -}}

{{/* Paths where keygate finds its secrets; shared by the Deployment and the Job. */}}
{{- define "keygate.secretEnv" -}}
- name: KEYGATE_DATABASE_URL_FILE
  value: /etc/keygate/secrets/database-url
- name: KEYGATE_ADMIN_TOKENS_FILE
  value: /etc/keygate/secrets/admin-tokens
{{- end -}}

{{/*
The Redis URL for shared rate limits, from its Secret (the Deployment only:
migrations do not rate-limit).
*/}}
{{- define "keygate.redisEnv" -}}
{{- with .Values.rateLimits.redis }}
{{- if .enabled }}
- name: KEYGATE_RATE_LIMIT_STORE
  valueFrom:
    secretKeyRef:
      name: {{ include "keygate.redisSecretName" $ }}
      key: {{ .urlKey }}
{{- end }}
{{- end }}
{{- end -}}

{{- define "keygate.redisSecretName" -}}
{{- .Values.rateLimits.redis.existingSecret | default (printf "%s-redis" (include "keygate.fullname" .)) -}}
{{- end -}}

{{/*
The secret volume: only the two keys keygate reads are projected, under fixed
file names, whatever the keys are called in an existing Secret.
*/}}
{{- define "keygate.secretVolume" -}}
- name: secrets
  secret:
    secretName: {{ .secretName }}
    defaultMode: 0440
    items:
      - key: {{ .root.Values.secrets.databaseUrlKey }}
        path: database-url
      - key: {{ .root.Values.secrets.adminTokensKey }}
        path: admin-tokens
{{- end -}}

{{/* Pod and container security settings; shared by the Deployment and the Job. */}}
{{- define "keygate.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: {{ .Values.podSecurityContext.runAsUser }}
runAsGroup: {{ .Values.podSecurityContext.runAsGroup }}
fsGroup: {{ .Values.podSecurityContext.fsGroup }}
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{- define "keygate.containerSecurityContext" -}}
runAsNonRoot: true
runAsUser: {{ .Values.podSecurityContext.runAsUser }}
runAsGroup: {{ .Values.podSecurityContext.runAsGroup }}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
privileged: false
capabilities:
  drop:
    - ALL
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{/* Probe kind: grpc or tcp. */}}
{{- define "keygate.probeMode" -}}
{{- if eq .Values.probes.mode "auto" -}}
{{- if .Values.tls.enabled }}tcp{{ else }}grpc{{ end -}}
{{- else -}}
{{- .Values.probes.mode -}}
{{- end -}}
{{- end -}}

{{/* One probe's handler. Arguments: root, port (admin|authz), service. */}}
{{- define "keygate.probeHandler" -}}
{{- $port := int (get .root.Values.containerPorts .port) -}}
{{- if eq (include "keygate.probeMode" .root) "grpc" -}}
grpc:
  port: {{ $port }}
  service: {{ .service | quote }}
{{- else -}}
tcpSocket:
  port: grpc-{{ .port }}
{{- end -}}
{{- end -}}
