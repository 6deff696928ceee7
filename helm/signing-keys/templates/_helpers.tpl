{{/*
Names and labels.
*/}}
{{- define "signing-keys.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "signing-keys.fullname" -}}
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

{{- define "signing-keys.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "signing-keys.selectorLabels" -}}
app.kubernetes.io/name: {{ include "signing-keys.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "signing-keys.commonLabels" -}}
helm.sh/chart: {{ include "signing-keys.chart" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: signing-keys
signing-keys/region: {{ .Values.localRegion | quote }}
{{- end -}}

{{- define "signing-keys.labels" -}}
{{ include "signing-keys.selectorLabels" . }}
{{ include "signing-keys.commonLabels" . }}
{{- end -}}

{{/*
Labels of the release's other pods (migration Job, helm test): never matched by the
Service, PodDisruptionBudget, HPA or NetworkPolicy selectors, which are for serving pods only.
*/}}
{{- define "signing-keys.componentLabels" -}}
{{- $root := index . 0 -}}
{{- $component := index . 1 -}}
app.kubernetes.io/name: {{ printf "%s-%s" (include "signing-keys.name" $root) $component | trunc 63 | trimSuffix "-" }}
app.kubernetes.io/instance: {{ $root.Release.Name }}
app.kubernetes.io/component: {{ $component }}
{{ include "signing-keys.commonLabels" $root }}
{{- end -}}

{{- define "signing-keys.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "signing-keys.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "signing-keys.image" -}}
{{- if .Values.image.digest -}}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest -}}
{{- else -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}
{{- end -}}

{{/*
Checks values.schema.json cannot express; rendered by every template that needs the config,
so a bad release fails at `helm install`/`template` with a message naming the value.
*/}}
{{- define "signing-keys.validate" -}}
{{- $names := list -}}
{{- range .Values.regions -}}
{{- if has .name $names -}}
{{- fail (printf "regions: region %q is listed twice" .name) -}}
{{- end -}}
{{- $names = append $names .name -}}
{{- end -}}
{{- if not (has (required "localRegion is required: install with -f values-<region>.yaml" .Values.localRegion) $names) -}}
{{- fail (printf "localRegion %q is not one of regions[].name (%s)" .Values.localRegion (join ", " $names)) -}}
{{- end -}}
{{- if eq (int .Values.containerPorts.http) (int .Values.containerPorts.grpc) -}}
{{- fail "containerPorts.http and containerPorts.grpc must differ" -}}
{{- end -}}
{{- $stop := add (int .Values.drain.preStopSeconds) (int .Values.drain.delaySeconds) (include "signing-keys.closeBound" . | int) -}}
{{- if le (int .Values.terminationGracePeriodSeconds) $stop -}}
{{- fail (printf "terminationGracePeriodSeconds (%d) must exceed drain.preStopSeconds + drain.delaySeconds + the service's 15 s close bound (%d)" (int .Values.terminationGracePeriodSeconds) $stop) -}}
{{- end -}}
{{- end -}}

{{/*
How long the service may take to close after its drain delay (service/server.py CLOSE_BOUND).
*/}}
{{- define "signing-keys.closeBound" -}}15{{- end -}}

{{/*
The variable that carries a region's DSN: aws-us-east-1 -> SIGNING_KEYS_DSN_AWS_US_EAST_1
(service.settings.region_dsn_variable).
*/}}
{{- define "signing-keys.dsnVariable" -}}
{{- printf "SIGNING_KEYS_DSN_%s" (. | upper | replace "-" "_") -}}
{{- end -}}

{{/*
SIGNING_KEYS_REGIONS: name:cloud[:priority],...
*/}}
{{- define "signing-keys.regionsSpec" -}}
{{- $items := list -}}
{{- range .Values.regions -}}
{{- if hasKey . "priority" -}}
{{- $items = append $items (printf "%s:%s:%d" .name .cloud (int .priority)) -}}
{{- else -}}
{{- $items = append $items (printf "%s:%s" .name .cloud) -}}
{{- end -}}
{{- end -}}
{{- join "," $items -}}
{{- end -}}

{{/*
Every non-secret SIGNING_KEYS_* variable, as a YAML map of strings: the ConfigMap's data, and
the migration Job's env (a pre-install hook runs before the ConfigMap exists).
*/}}
{{- define "signing-keys.config" -}}
{{- include "signing-keys.validate" . -}}
SIGNING_KEYS_REGIONS: {{ include "signing-keys.regionsSpec" . | quote }}
SIGNING_KEYS_LOCAL_REGION: {{ .Values.localRegion | quote }}
SIGNING_KEYS_HTTP_PORT: {{ .Values.containerPorts.http | toString | quote }}
SIGNING_KEYS_GRPC_PORT: {{ .Values.containerPorts.grpc | toString | quote }}
{{- if .Values.tls.enabled }}
SIGNING_KEYS_TLS_CERT_FILE: {{ printf "%s/tls.crt" .Values.tls.mountPath | quote }}
SIGNING_KEYS_TLS_KEY_FILE: {{ printf "%s/tls.key" .Values.tls.mountPath | quote }}
{{- if .Values.tls.clientCaSecretName }}
SIGNING_KEYS_TLS_CLIENT_CA_FILE: {{ printf "%s-client-ca/ca.crt" .Values.tls.mountPath | quote }}
{{- end }}
{{- end }}
{{- if .Values.database.caSecret.name }}
SIGNING_KEYS_DB_CA_FILE: {{ printf "%s/ca/ca.crt" .Values.database.mountPath | quote }}
{{- end }}
{{- if .Values.database.clientCertSecret.name }}
SIGNING_KEYS_DB_CERT_FILE: {{ printf "%s/client/tls.crt" .Values.database.mountPath | quote }}
SIGNING_KEYS_DB_KEY_FILE: {{ printf "%s/client/tls.key" .Values.database.mountPath | quote }}
{{- end }}
SIGNING_KEYS_DRAIN_DELAY: {{ .Values.drain.delaySeconds | toString | quote }}
{{- range $name, $value := .Values.settings }}
{{ printf "SIGNING_KEYS_%s" $name }}: {{ $value | toString | quote }}
{{- end }}
{{- end -}}

{{/*
The database TLS volumes and their mounts: (list $root clientCertSecretName).
*/}}
{{- define "signing-keys.databaseVolumes" -}}
{{- $root := index . 0 -}}
{{- $client := index . 1 -}}
{{- with $root.Values.database.caSecret.name }}
- name: db-ca
  secret:
    secretName: {{ . }}
    defaultMode: 0440
    items:
      - key: {{ $root.Values.database.caSecret.key | quote }}
        path: ca.crt
{{- end }}
{{- with $client }}
- name: db-client
  secret:
    secretName: {{ . }}
    defaultMode: 0440
    items:
      - key: tls.crt
        path: tls.crt
      - key: tls.key
        path: tls.key
{{- end }}
{{- end -}}

{{- define "signing-keys.databaseVolumeMounts" -}}
{{- $root := index . 0 -}}
{{- $client := index . 1 -}}
{{- if $root.Values.database.caSecret.name }}
- name: db-ca
  mountPath: {{ printf "%s/ca" $root.Values.database.mountPath }}
  readOnly: true
{{- end }}
{{- if $client }}
- name: db-client
  mountPath: {{ printf "%s/client" $root.Values.database.mountPath }}
  readOnly: true
{{- end }}
{{- end -}}

{{/*
Every Secret the serving pods read: the DSNs (environment: read once, at start) and the
mounted TLS files. The pods roll when the checksum of their names and data changes. The data
comes from `lookup`, i.e. from the cluster at install/upgrade time; `helm template` and
client-side dry runs see none, so there the checksum covers the names alone.
*/}}
{{- define "signing-keys.secretNames" -}}
{{- $names := list -}}
{{- range .Values.regions -}}
{{- $names = append $names .dsnSecret.name -}}
{{- end -}}
{{- if .Values.tls.enabled -}}
{{- $names = append $names .Values.tls.secretName -}}
{{- with .Values.tls.clientCaSecretName -}}
{{- $names = append $names . -}}
{{- end -}}
{{- end -}}
{{- with .Values.database.caSecret.name -}}
{{- $names = append $names . -}}
{{- end -}}
{{- with .Values.database.clientCertSecret.name -}}
{{- $names = append $names . -}}
{{- end -}}
{{- $names | uniq | sortAlpha | join "," -}}
{{- end -}}

{{- define "signing-keys.secretsChecksum" -}}
{{- $root := . -}}
{{- $parts := list -}}
{{- range (include "signing-keys.secretNames" . | splitList ",") -}}
{{- $secret := lookup "v1" "Secret" $root.Release.Namespace . -}}
{{- $parts = append $parts (printf "%s=%s" . (toJson (default dict ($secret).data))) -}}
{{- end -}}
{{- $parts | join ";" | sha256sum -}}
{{- end -}}

{{/*
The DSN of every region, by reference to its Secret: (list $root secretNameOverride); with an
override (the migration role's Secret), each region's key in that Secret instead.
*/}}
{{- define "signing-keys.dsnEnv" -}}
{{- $override := index . 1 -}}
{{- range (index . 0).Values.regions }}
- name: {{ include "signing-keys.dsnVariable" .name }}
  valueFrom:
    secretKeyRef:
      name: {{ default .dsnSecret.name $override }}
      key: {{ .dsnSecret.key | quote }}
{{- end }}
{{- end -}}

{{- define "signing-keys.probeScheme" -}}
{{- if .Values.tls.enabled -}}HTTPS{{- else -}}HTTP{{- end -}}
{{- end -}}

{{/*
NetworkPolicy egress rules: the cluster DNS (and NodeLocal DNSCache), and the databases.
*/}}
{{- define "signing-keys.dnsEgress" -}}
- to:
    - namespaceSelector:
        matchLabels:
          kubernetes.io/metadata.name: {{ .Values.networkPolicy.dnsNamespace }}
  {{- if .Values.networkPolicy.nodeLocalDNS.enabled }}
    # NodeLocal DNSCache answers on a link-local address on each node.
    - ipBlock:
        cidr: {{ printf "%s/%s" .Values.networkPolicy.nodeLocalDNS.address (ternary "128" "32" (contains ":" .Values.networkPolicy.nodeLocalDNS.address)) }}
  {{- end }}
  ports:
    - port: 53
      protocol: UDP
    - port: 53
      protocol: TCP
{{- end -}}

{{- define "signing-keys.databaseEgress" -}}
# Every region's database (the local one and the failover targets).
- to:
    {{- range .Values.networkPolicy.databaseCIDRs }}
    - ipBlock:
        cidr: {{ . }}
    {{- end }}
  ports:
    - port: {{ .Values.networkPolicy.databasePort }}
      protocol: TCP
{{- end -}}
