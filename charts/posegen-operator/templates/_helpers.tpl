{{/*
The chart's name, truncated to 63 characters (a DNS label).
*/}}
{{- define "posegen-operator.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
The full name: <release>-<chart> (just <release> when it contains the chart name), 63 characters at
most. Names derived from it (with a suffix) are truncated again to stay within 63.
*/}}
{{- define "posegen-operator.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{/*
<fullname>-<suffix>, truncated to 63 characters. Usage: include "posegen-operator.suffixed" (list . "migrate")
*/}}
{{- define "posegen-operator.suffixed" -}}
{{- $root := index . 0 }}
{{- $suffix := index . 1 }}
{{- $full := include "posegen-operator.fullname" $root }}
{{- printf "%s-%s" ($full | trunc (int (sub 62 (len $suffix))) | trimSuffix "-") $suffix }}
{{- end }}

{{/*
Chart name and version, for the helm.sh/chart label.
*/}}
{{- define "posegen-operator.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Standard labels on every object the chart makes.
*/}}
{{- define "posegen-operator.labels" -}}
helm.sh/chart: {{ include "posegen-operator.chart" . }}
{{ include "posegen-operator.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: posegen
{{- end }}

{{/*
Selector labels of the operator's pods (stable across upgrades: never add to them).
*/}}
{{- define "posegen-operator.selectorLabels" -}}
app.kubernetes.io/name: {{ include "posegen-operator.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/*
Selector labels of the operator pods only (the migration Job's pods share name and instance).
*/}}
{{- define "posegen-operator.operatorSelectorLabels" -}}
{{ include "posegen-operator.selectorLabels" . }}
app.kubernetes.io/component: operator
{{- end }}

{{/*
The operator's ServiceAccount.
*/}}
{{- define "posegen-operator.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "posegen-operator.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/*
The Secret the operator reads DATABASE_URL, REDIS_URL, POSEGEN_ADMIN_TOKEN and FLUX_API_KEY from.
*/}}
{{- define "posegen-operator.secretName" -}}
{{- default (include "posegen-operator.fullname" .) .Values.existingSecret }}
{{- end }}

{{/*
The worker Secret's name in generation namespaces ("" when workers get plain values).
*/}}
{{- define "posegen-operator.workerSecretName" -}}
{{- if .Values.worker.secret.name }}
{{- .Values.worker.secret.name }}
{{- else if .Values.worker.secret.create }}
{{- include "posegen-operator.suffixed" (list . "worker") }}
{{- end }}
{{- end }}

{{/*
Namespaces the worker Secret is created in.
*/}}
{{- define "posegen-operator.workerSecretNamespaces" -}}
{{- $namespaces := .Values.watchNamespaces }}
{{- if not $namespaces }}
{{- $namespaces = prepend .Values.worker.secret.namespaces .Release.Namespace }}
{{- end }}
{{- $namespaces | uniq | toJson }}
{{- end }}

{{/*
An image reference: repository, then @digest or :tag (the tag defaults to the appVersion).
*/}}
{{- define "posegen-operator.image" -}}
{{- $image := index . 0 }}
{{- $root := index . 1 }}
{{- if $image.digest }}
{{- printf "%s@%s" $image.repository $image.digest }}
{{- else }}
{{- printf "%s:%s" $image.repository (default $root.Chart.AppVersion $image.tag) }}
{{- end }}
{{- end }}

{{- define "posegen-operator.leaseName" -}}
{{- default (include "posegen-operator.fullname" .) .Values.operator.leaderElection.leaseName }}
{{- end }}

{{- define "posegen-operator.leaseNamespace" -}}
{{- default .Release.Namespace .Values.operator.leaderElection.leaseNamespace }}
{{- end }}

{{/*
Checks that a JSON schema cannot express (or only with an unreadable message): fail with a clear one.
*/}}
{{- define "posegen-operator.validate" -}}
{{- if not .Values.existingSecret }}
{{- if not .Values.database.url }}
{{- fail "database.url is required (postgresql://user:password@host:5432/db), or set existingSecret" }}
{{- end }}
{{- if not .Values.redis.url }}
{{- fail "redis.url is required (redis://host:6379/0), or set existingSecret" }}
{{- end }}
{{- end }}
{{- if and .Values.worker.secret.create .Values.existingSecret (not (and .Values.database.url .Values.redis.url)) }}
{{- fail "worker.secret.create needs database.url and redis.url; with existingSecret set worker.secret.create=false and worker.secret.name to Secrets you create in the generation namespaces" }}
{{- end }}
{{- if and .Values.worker.output.hostPath .Values.worker.output.claimName }}
{{- fail "set at most one of worker.output.hostPath and worker.output.claimName" }}
{{- end }}
{{- if and (eq .Values.worker.generator "flux") (not .Values.flux.apiUrl) }}
{{- fail "flux.apiUrl is required when worker.generator is flux" }}
{{- end }}
{{- $hb := .Values.operator.heartbeatIntervalSeconds }}
{{- if and (not (kindIs "invalid" $hb)) (gt (float64 $hb) (divf .Values.operator.heartbeatTtlSeconds 2)) }}
{{- fail "operator.heartbeatIntervalSeconds must be at most half of operator.heartbeatTtlSeconds" }}
{{- end }}
{{- $ports := .Values.operator.ports }}
{{- if or (eq (int $ports.api) (int $ports.metrics)) (eq (int $ports.api) (int $ports.probe)) (eq (int $ports.metrics) (int $ports.probe)) }}
{{- fail "operator.ports.api, .metrics and .probe must differ" }}
{{- end }}
{{- if and (gt (int .Values.replicaCount) 1) (not .Values.operator.leaderElection.enabled) }}
{{- fail "operator.leaderElection.enabled must stay true with more than one replica" }}
{{- end }}
{{- end }}

{{/*
Name of a cluster-scoped object: <namespace>-<fullname>[-suffix], so that releases of the same name
in two namespaces do not collide. Too long for 63 characters, it is cut and a hash of the whole
name keeps it unique.
*/}}
{{- define "posegen-operator.clusterName" -}}
{{- $root := index . 0 }}
{{- $suffix := index . 1 }}
{{- $base := printf "%s-%s" $root.Release.Namespace (include "posegen-operator.fullname" $root) }}
{{- $room := 63 }}
{{- if $suffix }}
{{- $room = int (sub 62 (len $suffix)) }}
{{- end }}
{{- if gt (len $base) $room }}
{{- $base = printf "%s-%s" ($base | trunc (int (sub $room 9)) | trimSuffix "-") ($base | sha256sum | trunc 8) }}
{{- end }}
{{- if $suffix }}
{{- printf "%s-%s" $base $suffix }}
{{- else }}
{{- $base }}
{{- end }}
{{- end }}

{{/*
What the operator does in the namespaces it serves, and nothing more:
- posegenerations: watch them, create them (the admin API's generate endpoint), patch finalizers;
- posegenerations/status: progress and recovery history;
- posegenerations/finalizers: update, only so that the worker pods' ownerReferences may set
  blockOwnerDeletion where the OwnerReferencesPermissionEnforcement admission plugin is on;
- pods: the worker pods (create, watch, delete a hung or cancelled one);
- events: the recovery story on each resource.
No Secrets: credentials reach the operator as mounted files (or secretKeyRef) and workers as secretKeyRef.
*/}}
{{- define "posegen-operator.rules" -}}
- apiGroups: ["posegen.io"]
  resources: ["posegenerations"]
  verbs: ["get", "list", "watch", "create", "patch"]
- apiGroups: ["posegen.io"]
  resources: ["posegenerations/status"]
  verbs: ["get", "patch"]
- apiGroups: ["posegen.io"]
  resources: ["posegenerations/finalizers"]
  verbs: ["update"]
- apiGroups: [""]
  resources: ["pods"]
  verbs: ["get", "list", "watch", "create", "delete"]
- apiGroups: [""]
  resources: ["events"]
  verbs: ["create", "patch"]
{{- end }}
