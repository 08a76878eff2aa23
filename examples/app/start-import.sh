#!/bin/sh
# Start a bulk import with curl, as an upload handler would, and print the job's name at once:
#   start-import.sh UPLOAD_ID
# Then poll it (phase and percent, and the workers' result once it is done):
#   start-import.sh --status NAME
#
# Inside a pod it uses the pod's ServiceAccount (bound to nightshift's edit role by
# examples/app/rbac.yaml); elsewhere set API_SERVER, TOKEN, CACERT and NAMESPACE.
set -eu
sa=/var/run/secrets/kubernetes.io/serviceaccount
api="${API_SERVER:-https://kubernetes.default.svc}"
token="${TOKEN:-$(cat "$sa/token")}"
cacert="${CACERT:-$sa/ca.crt}"
namespace="${NAMESPACE:-$(cat "$sa/namespace")}"
jobs="$api/apis/nightshift.dev/v1alpha1/namespaces/$namespace/backgroundjobs"
# A User-Agent of its own: the API server would pretty-print its answers to one starting "curl".
call() {
  curl --silent --show-error --fail-with-body --cacert "$cacert" --user-agent shop-web/start-import \
    -H "Authorization: Bearer $token" -H "Content-Type: application/json" "$@"
}
# The first value of "KEY" in a compact JSON answer (the API server's are): metadata.name comes
# before any other name, status.phase and status.progress.percent are the only ones.
field() { grep -o "\"$1\": *\"\{0,1\}[^\",}]*" | head -n 1 | sed 's/.*[:" ]//'; }

if [ "${1:-}" = --status ]; then
  answer="$(call "$jobs/$2")"
  echo "phase=$(echo "$answer" | field phase) percent=$(echo "$answer" | field percent)"
  echo "$answer" | sed -n 's/.*"result":\({[^}]*}\).*/result=\1/p'
  exit 0
fi
upload="${1:?usage: start-import.sh UPLOAD_ID | --status NAME}"
call -X POST "$jobs" -d "{
  \"apiVersion\": \"nightshift.dev/v1alpha1\", \"kind\": \"BackgroundJob\",
  \"metadata\": {\"generateName\": \"import-\", \"labels\": {\"shop.example/upload\": \"$upload\"}},
  \"spec\": {\"templateRef\": {\"name\": \"bulk-import\"}, \"parameters\": {\"UPLOAD_ID\": \"$upload\"}}
}" | field name
