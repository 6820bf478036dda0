{{/* Names, labels and small helpers shared by every template. */}}

{{- define "distinfer.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "distinfer.fullname" -}}
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

{{- define "distinfer.gateway.fullname" -}}{{ include "distinfer.fullname" . | trunc 55 | trimSuffix "-" }}-gateway{{- end -}}
{{- define "distinfer.node.fullname" -}}{{ include "distinfer.fullname" . | trunc 58 | trimSuffix "-" }}-node{{- end -}}
{{- define "distinfer.node.headless" -}}{{ include "distinfer.fullname" . | trunc 49 | trimSuffix "-" }}-node-headless{{- end -}}
{{- define "distinfer.authSecretName" -}}
{{- if .Values.auth.existingSecret -}}{{ .Values.auth.existingSecret }}{{- else -}}{{ include "distinfer.fullname" . | trunc 58 | trimSuffix "-" }}-auth{{- end -}}
{{- end -}}
{{- define "distinfer.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}{{ default (include "distinfer.fullname" .) .Values.serviceAccount.name }}{{- else -}}{{ default "default" .Values.serviceAccount.name }}{{- end -}}
{{- end -}}

{{- define "distinfer.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "distinfer.labels" -}}
helm.sh/chart: {{ include "distinfer.chart" . }}
app.kubernetes.io/name: {{ include "distinfer.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{- define "distinfer.selectorLabels" -}}
app.kubernetes.io/name: {{ include "distinfer.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "distinfer.gateway.selectorLabels" -}}
{{ include "distinfer.selectorLabels" . }}
app.kubernetes.io/component: gateway
{{- end -}}

{{- define "distinfer.node.selectorLabels" -}}
{{ include "distinfer.selectorLabels" . }}
app.kubernetes.io/component: node
{{- end -}}

{{/* The image of a component: its own `image` map wins over the chart-wide one. */}}
{{- define "distinfer.image" -}}
{{- $root := index . 0 -}}{{- $own := index . 1 -}}
{{- $repository := default $root.Values.image.repository $own.repository -}}
{{- $tag := default (default $root.Chart.AppVersion $root.Values.image.tag) $own.tag -}}
{{- printf "%s:%s" $repository (toString $tag) -}}
{{- end -}}

{{/* A settings value as the string the process reads: YAML numbers arrive as float64, so
     16777216 would otherwise print as 1.6777216e+07. */}}
{{- define "distinfer.str" -}}
{{- if kindIs "float64" . -}}
{{- if eq (float64 (int64 .)) . -}}{{ int64 . }}{{- else -}}{{ . }}{{- end -}}
{{- else -}}{{ . }}{{- end -}}
{{- end -}}

{{/* The DNS SRV name of the nodes' headless Service (port "http"). */}}
{{- define "distinfer.dnsSrv" -}}
{{- if .Values.discovery.dns.srvName -}}{{ .Values.discovery.dns.srvName }}{{- else -}}
_http._tcp.{{ include "distinfer.node.headless" . }}.{{ .Release.Namespace }}.svc.{{ .Values.clusterDomain }}
{{- end -}}
{{- end -}}

{{/* Static node URLs: the StatefulSet's stable pod names, then any extra URLs. */}}
{{- define "distinfer.staticNodes" -}}
{{- $urls := list -}}
{{- if and .Values.nodes.enabled (eq .Values.nodes.kind "StatefulSet") -}}
{{- $node := include "distinfer.node.fullname" . -}}
{{- $headless := include "distinfer.node.headless" . -}}
{{- range $i := until (int .Values.nodes.replicas) -}}
{{- $urls = append $urls (printf "http://%s-%d.%s.%s.svc.%s:%d" $node $i $headless $.Release.Namespace $.Values.clusterDomain (int $.Values.nodes.port)) -}}
{{- end -}}
{{- end -}}
{{- concat $urls .Values.discovery.static.nodes | join "," -}}
{{- end -}}

{{- define "distinfer.useAuthSecret" -}}
{{- if and (not .Values.auth.disabled) (or .Values.auth.existingSecret .Values.auth.createSecret) -}}true{{- end -}}
{{- end -}}

{{- define "distinfer.createAuthSecret" -}}
{{- /* With a JWKS URL too: the Secret then holds only the gateway→node token (nodes went without one). */ -}}
{{- if and (not .Values.auth.disabled) (not .Values.auth.existingSecret) .Values.auth.createSecret -}}true{{- end -}}
{{- end -}}

{{/* Settings both kinds of pod need from Secrets, and the downward API. */}}
{{- define "distinfer.commonEnv" -}}
- name: POD_NAME
  valueFrom:
    fieldRef:
      fieldPath: metadata.name
- name: POD_IP
  valueFrom:
    fieldRef:
      fieldPath: status.podIP
{{- if include "distinfer.useAuthSecret" . }}
- name: DISTINFER_NODE_TOKEN
  valueFrom:
    secretKeyRef:
      name: {{ include "distinfer.authSecretName" . }}
      key: {{ .Values.auth.secretKeys.nodeToken }}
      optional: true
{{- end }}
{{- if and (has "consul" .Values.discovery.sources) .Values.discovery.consul.tokenSecret.name }}
- name: DISTINFER_CONSUL_TOKEN
  valueFrom:
    secretKeyRef:
      name: {{ .Values.discovery.consul.tokenSecret.name }}
      key: {{ .Values.discovery.consul.tokenSecret.key }}
{{- end }}
{{- end -}}

{{/* OpenTelemetry's standard variables for one component. */}}
{{- define "distinfer.otel" -}}
{{- $root := index . 0 -}}{{- $service := index . 1 -}}
OTEL_SERVICE_NAME: {{ $service | quote }}
{{- with $root.Values.otel }}
{{- if .endpoint }}
OTEL_EXPORTER_OTLP_ENDPOINT: {{ .endpoint | quote }}
OTEL_EXPORTER_OTLP_PROTOCOL: {{ .protocol | quote }}
OTEL_TRACES_SAMPLER: {{ .tracesSampler | quote }}
OTEL_TRACES_SAMPLER_ARG: {{ include "distinfer.str" .tracesSamplerArg | quote }}
{{- else }}
OTEL_TRACES_EXPORTER: "none"
OTEL_METRICS_EXPORTER: "none"
OTEL_LOGS_EXPORTER: "none"
{{- end }}
{{- if .resourceAttributes }}
OTEL_RESOURCE_ATTRIBUTES: {{ .resourceAttributes | quote }}
{{- end }}
{{- range $name, $value := .extraEnv }}
{{ $name }}: {{ include "distinfer.str" $value | quote }}
{{- end }}
{{- end }}
{{- end -}}

{{/* The tmp emptyDir, the only writable path under a read-only root filesystem. */}}
{{- define "distinfer.tmpVolume" -}}
- name: tmp
  emptyDir:
    sizeLimit: {{ .Values.tmpSizeLimit }}
{{- end -}}
{{- /* The gateway's probe paths. `distinfer gateway` (the chart's own command) serves /livez and
/readyz whatever the flag says; an image of your own (gateway.command or gateway.args) has the
plugin's <prefix>/health/live and /ready, unless probes.livenessPath/readinessPath say otherwise. */}}
{{- define "distinfer.gateway.standalone" -}}
{{- /* The image's own entrypoint (`distinfer`) running `gateway`: args may change its flags. */ -}}
{{- if and (not .Values.gateway.command) (or (not .Values.gateway.args) (eq (toString (first .Values.gateway.args)) "gateway")) }}true{{ end -}}
{{- end -}}
{{- define "distinfer.gateway.livePath" -}}
{{- $prefix := index .Values.gateway.settings "DISTINFER_API_PREFIX" | default "/api/v1/distributed" -}}
{{- .Values.gateway.probes.livenessPath | default (ternary "/livez" (printf "%s/health/live" $prefix) (eq (include "distinfer.gateway.standalone" .) "true")) -}}
{{- end -}}
{{- define "distinfer.gateway.readyPath" -}}
{{- $prefix := index .Values.gateway.settings "DISTINFER_API_PREFIX" | default "/api/v1/distributed" -}}
{{- .Values.gateway.probes.readinessPath | default (ternary "/readyz" (printf "%s/health/ready" $prefix) (eq (include "distinfer.gateway.standalone" .) "true")) -}}
{{- end -}}
