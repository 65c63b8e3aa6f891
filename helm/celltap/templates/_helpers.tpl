{{/* Chart name, truncated to the 63 characters a DNS label allows. */}}
{{- define "celltap.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Release-scoped name, at most 40 characters so that with the longest component suffix
     ("-collector-metrics") every Service name stays within a 63-character DNS label. */}}
{{- define "celltap.fullname" -}}
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

{{- define "celltap.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Common labels; call with (dict "ctx" $ "component" "cell"). */}}
{{- define "celltap.labels" -}}
helm.sh/chart: {{ include "celltap.chart" .ctx }}
{{ include "celltap.selectorLabels" . }}
app.kubernetes.io/version: {{ .ctx.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .ctx.Release.Service }}
app.kubernetes.io/part-of: celltap
{{- end -}}

{{- define "celltap.selectorLabels" -}}
app.kubernetes.io/name: {{ include "celltap.name" .ctx }}
app.kubernetes.io/instance: {{ .ctx.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "celltap.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}

{{/* The headless Services of the StatefulSets. */}}
{{- define "celltap.etcdHeadless" -}}{{ include "celltap.fullname" . }}-etcd-headless{{- end -}}
{{- define "celltap.cellHeadless" -}}{{ include "celltap.fullname" . }}-cell-headless{{- end -}}
{{- define "celltap.nodeHeadless" -}}{{ include "celltap.fullname" . }}-node-headless{{- end -}}

{{/* The registry URL every component is given: the bundled etcd members, or the external URL. */}}
{{- define "celltap.registryUrl" -}}
{{- if .Values.etcd.bundled -}}
{{- $full := include "celltap.fullname" . -}}
{{- $headless := include "celltap.etcdHeadless" . -}}
{{- $members := list -}}
{{- range $i := until (int .Values.etcd.replicas) -}}
{{- $members = append $members (printf "%s-etcd-%d.%s.%s.svc:%d" $full $i $headless $.Release.Namespace (int $.Values.etcd.clientPort)) -}}
{{- end -}}
etcd://{{ join "," $members }}
{{- else -}}
{{- required "etcd.externalUrl is required when etcd.bundled is false" .Values.etcd.externalUrl -}}
{{- end -}}
{{- end -}}

{{/* Where cells export IPFIX: the collectors' in-cluster Service address. */}}
{{- define "celltap.collectorIpfixUrl" -}}
{{- $port := 4739 -}}
{{- range .Values.collector.service.ports -}}
{{- if eq .name "ipfix" }}{{ $port = int .port }}{{ end -}}
{{- end -}}
udp://{{ include "celltap.fullname" . }}-collector.{{ .Release.Namespace }}.svc:{{ $port }}
{{- end -}}

{{/* Spread across racks, then across hosts; call with (dict "ctx" $ "component" "cell"). */}}
{{- define "celltap.topologySpread" -}}
- maxSkew: {{ int .ctx.Values.topology.maxSkew }}
  topologyKey: {{ .ctx.Values.topology.rackLabel }}
  whenUnsatisfiable: {{ .ctx.Values.topology.whenUnsatisfiable }}
  labelSelector:
    matchLabels:
      {{- include "celltap.selectorLabels" . | nindent 6 }}
- maxSkew: 1
  topologyKey: kubernetes.io/hostname
  whenUnsatisfiable: ScheduleAnyway
  labelSelector:
    matchLabels:
      {{- include "celltap.selectorLabels" . | nindent 6 }}
{{- end -}}

{{/* Probes on the Prometheus endpoint every component serves; call with the port number, or with
     (dict "port" N "scheme" "HTTPS") for an endpoint served over TLS (the analysis nodes with tls). */}}
{{- define "celltap.metricsProbes" -}}
{{- $port := . -}}
{{- $scheme := "HTTP" -}}
{{- if kindIs "map" . -}}
{{- $port = .port -}}
{{- $scheme = .scheme -}}
{{- end -}}
readinessProbe:
  httpGet:
    path: /metrics
    port: {{ int $port }}
    {{- if eq $scheme "HTTPS" }}
    scheme: HTTPS
    {{- end }}
  periodSeconds: 10
  timeoutSeconds: 5
livenessProbe:
  httpGet:
    path: /metrics
    port: {{ int $port }}
    {{- if eq $scheme "HTTPS" }}
    scheme: HTTPS
    {{- end }}
  initialDelaySeconds: 15
  periodSeconds: 20
  timeoutSeconds: 5
  failureThreshold: 3
{{- end -}}

{{/* TLS (values tls): the Secret with ca.crt, tls.crt and tls.key that one role mounts;
     call with (dict "ctx" $ "role" "node" | "collector" | "client"). */}}
{{- define "celltap.tlsSecret" -}}
{{- if eq .ctx.Values.tls.source "existing" -}}
{{- index .ctx.Values.tls.existingSecrets .role -}}
{{- else -}}
{{- include "celltap.fullname" .ctx }}-{{ .role }}-tls
{{- end -}}
{{- end -}}

{{/* Where the TLS Secret is mounted, and the config section that points there. */}}
{{- define "celltap.tlsDir" -}}/etc/celltap-tls{{- end -}}
{{- define "celltap.tlsConfig" -}}
{{- $d := include "celltap.tlsDir" . -}}
{{- toJson (dict "ca" (printf "%s/ca.crt" $d) "cert" (printf "%s/tls.crt" $d) "key" (printf "%s/tls.key" $d)) -}}
{{- end -}}

{{/* The names in the analysis nodes' certificate: every pod of the headless Service and the query
     Service, as collectors, nodes and people dial them. */}}
{{- define "celltap.nodeDnsNames" -}}
{{- $full := include "celltap.fullname" . -}}
{{- $ns := .Release.Namespace -}}
{{- $headless := include "celltap.nodeHeadless" . -}}
{{- toJson (list (printf "*.%s.%s.svc" $headless $ns) (printf "*.%s.%s.svc.cluster.local" $headless $ns) (printf "%s-query" $full) (printf "%s-query.%s.svc" $full $ns) (printf "%s-query.%s.svc.cluster.local" $full $ns) "localhost") -}}
{{- end -}}

{{- define "celltap.podEnv" -}}
- name: POD_NAME
  valueFrom:
    fieldRef:
      fieldPath: metadata.name
- name: POD_IP
  valueFrom:
    fieldRef:
      fieldPath: status.podIP
- name: POD_NAMESPACE
  valueFrom:
    fieldRef:
      fieldPath: metadata.namespace
{{- end -}}

{{/* Checksum of one component's config file, so a change rolls only that component's pods
     (an incubator restart loses its live-flow pins); call with (dict "ctx" $ "key" "incubator.yaml"). */}}
{{- define "celltap.configChecksum" -}}
{{- $cm := include (print .ctx.Template.BasePath "/configmap.yaml") .ctx | fromYaml -}}
{{- index $cm.data .key | sha256sum -}}
{{- end -}}

{{/* Metrics ports of one analyzer sidecar as (name, port) pairs: the analyzer's own, and with
     balance N its children's at port+1 .. port+N (the supervisor's numbering). */}}
{{- define "celltap.analyzerPorts" -}}
{{- $ports := list (dict "name" (printf "an-%s" .name) "port" (int .metricsPort)) -}}
{{- $balance := int (default 1 .balance) -}}
{{- if gt $balance 1 -}}
{{- range $i := until $balance -}}
{{- $ports = append $ports (dict "name" (printf "an-%s-%d" $.name $i) "port" (add (int $.metricsPort) 1 $i)) -}}
{{- end -}}
{{- end -}}
{{- toJson $ports -}}
{{- end -}}

{{/* A memory quantity (4Gi, 512Mi, 2G, 1073741824) in bytes; other forms fail the render. */}}
{{- define "celltap.bytes" -}}
{{- $q := toString . -}}
{{- $num := regexFind "^[0-9]+" $q -}}
{{- $unit := trimPrefix $num $q -}}
{{- $units := dict "" 1 "Ki" 1024 "Mi" 1048576 "Gi" 1073741824 "Ti" 1099511627776 "k" 1000 "M" 1000000 "G" 1000000000 "T" 1000000000000 -}}
{{- if or (not $num) (not (hasKey $units $unit)) -}}
{{- fail (printf "memory quantity %q: use a whole number with Ki, Mi, Gi, Ti, k, M, G or T" $q) -}}
{{- end -}}
{{- printf "%d" (mul (int64 $num) (int64 (get $units $unit))) -}}
{{- end -}}
