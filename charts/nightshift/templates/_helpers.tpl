{{/* The chart name, or nameOverride. */}}
{{- define "nightshift.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
The release's base name for its objects: fullnameOverride, else the release name when it already
contains the chart name, else RELEASE-CHART. At most 63 characters (a DNS label).
*/}}
{{- define "nightshift.fullname" -}}
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

{{/* CHART-VERSION, for the helm.sh/chart label. */}}
{{- define "nightshift.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* The labels every object of the release carries. */}}
{{- define "nightshift.labels" -}}
helm.sh/chart: {{ include "nightshift.chart" . }}
{{ include "nightshift.selectorLabels" . }}
app.kubernetes.io/version: {{ .Values.image.tag | default .Chart.AppVersion | trunc 63 | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: nightshift
{{- end }}

{{/* The labels that select the operator pods (never change them on upgrade: selectors are immutable). */}}
{{- define "nightshift.selectorLabels" -}}
app.kubernetes.io/name: {{ include "nightshift.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/* The operator's ServiceAccount name. */}}
{{- define "nightshift.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "nightshift.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* The operator image, REPOSITORY:TAG (the tag defaults to the appVersion). */}}
{{- define "nightshift.image" -}}
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion) }}
{{- end }}

{{/* The Lease the replicas elect their leader on, in the release namespace. */}}
{{- define "nightshift.leaderLease" -}}
nightshift-leader
{{- end }}

{{/* Combinations of values the schema cannot refuse with a clear message. */}}
{{- define "nightshift.validate" -}}
{{- if and (gt (int .Values.replicas) 1) (not .Values.leaderElection.enabled) }}
{{- fail (printf "replicas is %d but leaderElection.enabled is false: more than one operator would act on the same jobs; enable leader election or set replicas to 1" (int .Values.replicas)) }}
{{- end }}
{{- end }}

{{/*
What the operator does with the API, as RBAC rules: a ClusterRole's when it watches every
namespace, a Role's in each watched namespace otherwise.
*/}}
{{- define "nightshift.operatorRules" -}}
# Watch BackgroundJobs; delete a finished one ttlSecondsAfterFinished after it finished; patch
# one that names a template to write the template's fields into it. Create the jobs of a
# BackgroundJobSchedule; delete them beyond its history limits, or to replace them.
- apiGroups: ["nightshift.dev"]
  resources: ["backgroundjobs"]
  verbs: ["get", "list", "watch", "create", "delete", "patch"]
# Watch BackgroundJobSchedules, and write their status with server-side apply.
- apiGroups: ["nightshift.dev"]
  resources: ["backgroundjobschedules"]
  verbs: ["get", "list", "watch"]
- apiGroups: ["nightshift.dev"]
  resources: ["backgroundjobschedules/status"]
  verbs: ["get", "patch"]
# Read the templates jobs name (spec.templateRef).
- apiGroups: ["nightshift.dev"]
  resources: ["backgroundjobtemplates"]
  verbs: ["get", "list", "watch"]
# Write the status with server-side apply (a PATCH of the status subresource).
- apiGroups: ["nightshift.dev"]
  resources: ["backgroundjobs/status"]
  verbs: ["get", "patch"]
# Worker pods: create one per attempt of a shard, delete them to stop them (suspend, timeouts,
# fencing), patch them to remove the nightshift.dev/tracking finalizer once the outcome is recorded.
- apiGroups: [""]
  resources: ["pods"]
  verbs: ["get", "list", "watch", "create", "delete", "patch"]
# One Lease per shard: created before its worker starts (then, once read and found the job's,
# written with server-side apply; someone else's is left alone) and watched for the
# worker's heartbeats. `update`, `get` and `patch` are also what the per-job worker Roles grant
# on their Leases, and RBAC lets the operator grant only what it holds itself.
- apiGroups: ["coordination.k8s.io"]
  resources: ["leases"]
  verbs: ["get", "list", "watch", "create", "patch", "update"]
# Per-job least-privilege worker accounts: a ServiceAccount, a Role allowing get/update/patch on
# that job's Leases only, and their RoleBinding: each created, or read (get) and, only if the
# job's, written with server-side apply (patch). Creating a Role with lease verbs, or binding it, requires the operator to
# hold those verbs itself, which the rule above does; no escalate or bind verbs are needed.
- apiGroups: [""]
  resources: ["serviceaccounts"]
  verbs: ["get", "create", "patch"]
- apiGroups: ["rbac.authorization.k8s.io"]
  resources: ["roles", "rolebindings"]
  verbs: ["get", "create", "patch"]
# Events on the jobs (Admitted, WorkerStarted, AttemptFailed, ...) and schedules (SuccessfulCreate,
# JobAlreadyActive, ...): each created once, never changed.
- apiGroups: ["events.k8s.io"]
  resources: ["events"]
  verbs: ["create"]
{{- end }}
