{{/* The incubator's nodeSelector as YAML ("{}" when empty): incubator.nodeSelector plus the tap
     node label (incubator.tapNodeLabel, KEY=VALUE; "" adds none).  A string, not a map default, so
     that a values file can clear it: Helm deep-merges maps, and only null removes a default key. */}}
{{- define "celltap.incubatorNodeSelector" -}}
{{- $sel := deepCopy (default (dict) .Values.incubator.nodeSelector) -}}
{{- with .Values.incubator.tapNodeLabel -}}
{{- $kv := splitn "=" 2 . -}}
{{- $_ := set $sel $kv._0 $kv._1 -}}
{{- end -}}
{{- toYaml $sel -}}
{{- end -}}
