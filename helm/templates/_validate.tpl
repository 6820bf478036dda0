{{/* Combinations the schema cannot express; each fails the render with the fix to make. */}}
{{- define "distinfer.validate" -}}
{{- $sources := .Values.discovery.sources -}}
{{- if and .Values.nodes.autoscaling.enabled (eq (len $sources) 1) (has "static" $sources) -}}
{{- fail "nodes.autoscaling needs discovery.sources dns or consul: a static node list cannot follow a changing replica count" -}}
{{- end -}}
{{- if and (has "static" $sources) (not (include "distinfer.staticNodes" .)) .Values.gateway.enabled (not .Values.discovery.static.nodesFile) -}}
{{- fail "static discovery has no nodes: keep nodes.kind=StatefulSet, or give discovery.static.nodes or discovery.static.nodesFile" -}}
{{- end -}}
{{- if and (has "dns" $sources) (not .Values.nodes.enabled) (not .Values.discovery.dns.srvName) -}}
{{- fail "dns discovery without the chart's nodes needs discovery.dns.srvName" -}}
{{- end -}}
{{- if and (not .Values.auth.disabled) (not .Values.auth.existingSecret) (not .Values.auth.createSecret) (not .Values.auth.jwksUrl) -}}
{{- fail "auth is on: give auth.existingSecret, auth.jwksUrl or auth.createSecret=true (or auth.disabled=true for a closed test cluster)" -}}
{{- end -}}
{{- if and (eq .Values.tasks.store "redis") (not .Values.tasks.redisUrl) (not .Values.tasks.redisUrlSecret.name) -}}
{{- fail "tasks.store=redis needs tasks.redisUrl or tasks.redisUrlSecret.name" -}}
{{- end -}}
{{- if and .Values.gateway.enabled (eq .Values.tasks.store "memory") (or (gt (int .Values.gateway.replicas) 1) .Values.gateway.autoscaling.enabled) -}}
{{- fail "tasks.store=memory keeps each gateway replica's tasks to itself, so a poll that reaches another replica is a 404: with gateway.replicas > 1 or gateway.autoscaling, set tasks.store=redis" -}}
{{- end -}}
{{- $flag := lower (toString (index .Values.gateway.settings "ENABLE_DISTRIBUTED_INFERENCE")) -}}
{{- $off := has $flag (list "false" "0" "off" "no" "f" "n") -}}
{{- $prefix := index .Values.gateway.settings "DISTINFER_API_PREFIX" | default "/api/v1/distributed" -}}
{{- if and .Values.gateway.enabled $off (not (include "distinfer.gateway.standalone" .)) (not (and .Values.gateway.probes.livenessPath .Values.gateway.probes.readinessPath)) -}}
{{- fail (printf "ENABLE_DISTRIBUTED_INFERENCE is off, so your image's %s/health answers 404: set gateway.probes.livenessPath and readinessPath to your app's own health endpoints" $prefix) -}}
{{- end -}}
{{- if hasKey .Values.gateway.settings "DISTINFER_METRICS_PATH" -}}
{{- fail "set metrics.path, not gateway.settings.DISTINFER_METRICS_PATH: the ServiceMonitor scrapes metrics.path" -}}
{{- end -}}
{{- end -}}
