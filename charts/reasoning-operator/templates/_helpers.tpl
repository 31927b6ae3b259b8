{{- define "reasoning-operator.name" -}}
{{- .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "reasoning-operator.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "reasoning-operator.selectorLabels" -}}
app.kubernetes.io/name: {{ include "reasoning-operator.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "reasoning-operator.labels" -}}
{{ include "reasoning-operator.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: reasoning-operator
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{- end -}}

{{- define "reasoning-operator.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "reasoning-operator.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- required "serviceAccount.name: name an existing ServiceAccount when serviceAccount.create is false" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "reasoning-operator.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}

{{- define "reasoning-operator.trainerImage" -}}
{{- printf "%s:%s" .Values.trainer.image.repository (default .Chart.AppVersion .Values.trainer.image.tag) -}}
{{- end -}}

{{/* The rules of the operator's Role (or ClusterRole when it watches every namespace). */}}
{{- define "reasoning-operator.rules" -}}
- apiGroups: [reasoning.dev]
  resources: [reasoningtrainings]
  verbs: [get, list, watch, patch]
- apiGroups: [reasoning.dev]
  resources: [reasoningtrainings/status]
  verbs: [get, patch]
# A child's ownerReference blocks its run's deletion until the child is gone; clusters with the
# OwnerReferencesPermissionEnforcement admission plugin (OpenShift) allow that only to whoever may
# set the run's finalizers. The operator itself never adds one.
- apiGroups: [reasoning.dev]
  resources: [reasoningtrainings/finalizers]
  verbs: [update]
- apiGroups: [batch]
  resources: [jobs]
  verbs: [get, list, watch, create, delete]
- apiGroups: [""]
  resources: [configmaps, services, persistentvolumeclaims]
  verbs: [get, list, create]
- apiGroups: [""]
  resources: [pods]
  verbs: [get, list, watch]
- apiGroups: ["", events.k8s.io]
  resources: [events]
  verbs: [create, patch]
# A multi-node stage scheduled by Volcano gets a PodGroup (gang scheduling).
- apiGroups: [scheduling.volcano.sh]
  resources: [podgroups]
  verbs: [create]
# A multi-node stage is a JobSet where the cluster serves jobset.x-k8s.io.
- apiGroups: [jobset.x-k8s.io]
  resources: [jobsets]
  verbs: [get, create, delete]
# Why the Job controller cannot create a stage's pod is only in its FailedCreate events.
- apiGroups: [""]
  resources: [events]
  verbs: [list]
{{- end -}}

{{- define "reasoning-operator.webhookCertificate" -}}
{{- printf "%s-webhook" (include "reasoning-operator.fullname" .) -}}
{{- end -}}

{{/* True when the chart renders against a cluster (install, upgrade, `helm template --dry-run=server`):
     `lookup` then sees the `default` namespace every cluster has. Offline (`helm template`, lint)
     it sees nothing, and the checks below stand aside. */}}
{{- define "reasoning-operator.online" -}}
{{- if lookup "v1" "Namespace" "" "default" -}}true{{- end -}}
{{- end -}}

{{/* Fails the install with the value to change when the cluster lacks an API the values ask for,
     instead of Helm's "no matches for kind" after half the objects exist.
     Arguments: (list $ "monitoring.coreos.com/v1/ServiceMonitor" "serviceMonitor.enabled" "the Prometheus Operator's CRDs (kube-prometheus-stack)") */}}
{{- define "reasoning-operator.requireApi" -}}
{{- $root := index . 0 }}{{- $api := index . 1 }}{{- $value := index . 2 }}{{- $provider := index . 3 }}
{{- if and (include "reasoning-operator.online" $root) (not ($root.Capabilities.APIVersions.Has $api)) -}}
{{- fail (printf "%s=true needs %s, which this cluster does not serve: install %s first, or set %s=false. (helm template: pass --api-versions %s)" $value $api $provider $value $api) -}}
{{- end -}}
{{- end -}}

{{/* Fails when a namespace the values target does not exist. The chart never creates namespaces
     besides the release's own (`--create-namespace`), so an uninstall never deletes one holding runs.
     Arguments: (list $ "research" "watchNamespaces") */}}
{{- define "reasoning-operator.requireNamespace" -}}
{{- $root := index . 0 }}{{- $namespace := index . 1 }}{{- $value := index . 2 }}
{{- if and (ne $namespace $root.Release.Namespace) (include "reasoning-operator.online" $root) (not (lookup "v1" "Namespace" "" $namespace)) -}}
{{- fail (printf "%s: namespace %q does not exist. Create it first (kubectl create namespace %s); the chart creates no namespace but the release's own." $value $namespace $namespace) -}}
{{- end -}}
{{- end -}}
