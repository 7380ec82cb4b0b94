{{/*
Helpers of the shunt chart. Names of Services, the APIService and the webhook
configuration are fixed (the design's contract; sidecars and certificates refer to
them), so there is no fullname helper: install one release per cluster.
*/}}

{{/* Labels on every object. */}}
{{- define "shunt.labels" -}}
app.kubernetes.io/name: shunt
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{- end }}

{{/* Selector labels of a component: (dict "root" $ "component" "operator"). */}}
{{- define "shunt.selectorLabels" -}}
app.kubernetes.io/name: shunt
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{/* Labels of a component's objects. */}}
{{- define "shunt.componentLabels" -}}
{{ include "shunt.labels" .root }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{/* An image reference: (dict "root" $ "image" .Values.operator.image). */}}
{{- define "shunt.image" -}}
{{- printf "%s:%s" .image.repository (default .root.Chart.AppVersion .image.tag) -}}
{{- end }}

{{/* The address components listen on: 0.0.0.0, or the pod IP (listenOnPodIP). */}}
{{- define "shunt.listenHost" -}}
{{- if .Values.listenOnPodIP -}}$(POD_IP){{- else -}}0.0.0.0{{- end -}}
{{- end }}

{{/* DNS names of the one certificate: the three Services, short and long forms. */}}
{{- define "shunt.dnsNames" -}}
{{- $ns := .Release.Namespace -}}
{{- $names := list -}}
{{- range list "shunt-webhook" "shunt-api" "shunt-operator" -}}
{{- $names = append $names (printf "%s.%s.svc" . $ns) -}}
{{- $names = append $names (printf "%s.%s.svc.cluster.local" . $ns) -}}
{{- end -}}
{{- join "," $names -}}
{{- end }}

{{/* The Secret holding tls.crt, tls.key and ca.crt. */}}
{{- define "shunt.tlsSecret" -}}
{{- .Values.certificates.secretName -}}
{{- end }}

{{/*
caBundle of the MutatingWebhookConfiguration and the APIService, when the chart sets it:
mode secret (required) and mode cert-manager with an explicit bundle. Mode self leaves it
to the webhook, mode cert-manager without a bundle to cainjector.
*/}}
{{- define "shunt.caBundle" -}}
{{- $c := .Values.certificates -}}
{{- if eq $c.mode "secret" -}}
{{- if not $c.caBundle -}}
{{- fail "certificates.mode=secret needs certificates.caBundle: the PEM CA that signed tls.crt in the Secret certificates.secretName (e.g. --set-file certificates.caBundle=ca.crt)" -}}
{{- end -}}
{{- $c.caBundle | b64enc -}}
{{- else if and (eq $c.mode "cert-manager") $c.caBundle -}}
{{- $c.caBundle | b64enc -}}
{{- end -}}
{{- end }}

{{/* The annotation asking cert-manager's cainjector to fill the caBundle, if wanted. */}}
{{- define "shunt.caInjection" -}}
{{- if and (eq .Values.certificates.mode "cert-manager") (not .Values.certificates.caBundle) -}}
cert-manager.io/inject-ca-from: {{ printf "%s/%s" .Release.Namespace (include "shunt.tlsSecret" .) }}
{{- end -}}
{{- end }}

{{/* Hardened pod-level security context (operator and webhook). */}}
{{- define "shunt.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: 65532
runAsGroup: 65532
fsGroup: 65532
seccompProfile:
  type: RuntimeDefault
{{- end }}

{{/* Hardened container security context (operator and webhook). */}}
{{- define "shunt.containerSecurityContext" -}}
runAsNonRoot: true
runAsUser: 65532
runAsGroup: 65532
readOnlyRootFilesystem: true
allowPrivilegeEscalation: false
privileged: false
capabilities:
  drop:
    - ALL
seccompProfile:
  type: RuntimeDefault
{{- end }}

{{/* Env POD_IP from the downward API (listenOnPodIP; harmless otherwise). */}}
{{- define "shunt.podIPEnv" -}}
- name: POD_IP
  valueFrom:
    fieldRef:
      fieldPath: status.podIP
{{- end }}

{{/* Default affinity: spread replicas of a component over nodes when possible. */}}
{{- define "shunt.affinity" -}}
{{- if .affinity -}}
{{ toYaml .affinity }}
{{- else -}}
podAntiAffinity:
  preferredDuringSchedulingIgnoredDuringExecution:
    - weight: 100
      podAffinityTerm:
        topologyKey: kubernetes.io/hostname
        labelSelector:
          matchLabels:
            {{- include "shunt.selectorLabels" (dict "root" .root "component" .component) | nindent 12 }}
{{- end -}}
{{- end }}
