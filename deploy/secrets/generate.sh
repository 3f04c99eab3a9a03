#!/usr/bin/env bash
# Makes the secret files deploy/compose.yaml mounts, with fresh random values, in this
# directory (git-ignored). Existing files are kept, so it is safe to run again; delete a file
# to renew it. Needs bash, head, base64, od and sha256sum (or shasum); no lease-sync binary.
#
#   openapp_api_key       the OpenApp API key: a sandbox-style key for a trial; replace its
#                         content with your organisation's real key before pointing
#                         openapp.base_url at the real OpenApp
#   webhook_secrets_acme  the Standard Webhooks secret(s) of source acme-pms, one per line
#   admin_tokens          the sha256:… hash of the admin API token (what lease-sync reads)
#   admin_token           the admin API token itself, for you (Authorization: Bearer …);
#                         mounted nowhere
set -euo pipefail
cd "$(dirname "$0")"
umask 077

sha256_hex() {
  if command -v sha256sum >/dev/null 2>&1; then sha256sum | cut -d' ' -f1; else shasum -a 256 | cut -d' ' -f1; fi
}

made=()
if [ ! -s openapp_api_key ]; then
  # OpenApp keys look like {base_url}_openapp_{secret}; the sandbox accepts any non-empty key.
  printf 'http://sandbox:8081/api/v1_openapp_%s\n' "$(head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n')" > openapp_api_key
  made+=(openapp_api_key)
fi
if [ ! -s webhook_secrets_acme ]; then
  printf 'whsec_%s\n' "$(head -c 32 /dev/urandom | base64 | tr -d '\n')" > webhook_secrets_acme
  made+=(webhook_secrets_acme)
fi
if [ ! -s admin_tokens ] || [ ! -s admin_token ]; then
  # The same form `lease-sync admin hash-token --generate` prints: lsat_ + 32 random bytes in
  # unpadded base64url; the config holds only sha256:<hex of SHA-256(token)>.
  token="lsat_$(head -c 32 /dev/urandom | base64 | tr -d '\n=' | tr '+/' '-_')"
  printf '%s\n' "$token" > admin_token
  printf 'sha256:%s\n' "$(printf '%s' "$token" | sha256_hex)" > admin_tokens
  made+=(admin_token admin_tokens)
fi

# Compose bind-mounts these files into containers that run as uid 10001, which must be able to
# read them: the files are world-readable, and this directory (mode 700) keeps other users of
# this machine out. As root, hand them to 10001 instead and keep them private.
chmod 700 .
if [ "$(id -u)" = "0" ]; then
  chown 10001:10001 openapp_api_key webhook_secrets_acme admin_tokens
  chmod 400 openapp_api_key webhook_secrets_acme admin_tokens
else
  chmod 644 openapp_api_key webhook_secrets_acme admin_tokens
fi
chmod 600 admin_token

if [ ${#made[@]} -gt 0 ]; then
  echo "made in $(pwd): ${made[*]}"
else
  echo "all secret files already exist in $(pwd); delete one to renew it"
fi
echo "admin API token (Authorization: Bearer …): in $(pwd)/admin_token"
