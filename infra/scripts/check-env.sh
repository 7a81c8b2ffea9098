#!/bin/sh
# azd preprovision hook: stop early, with the fix, when the broker's app registration is not known yet.
# azd exports the environment's values (azd env get-values) to hooks.
set -eu
if [ -z "${JIT_API_CLIENT_ID:-}" ]; then
  echo "JIT_API_CLIENT_ID is not set in this azd environment." >&2
  echo "Create the broker's app registration first:  infra/scripts/app-registration.sh" >&2
  echo "(it runs 'azd env set JIT_API_CLIENT_ID ...' for you), then run 'azd up' again." >&2
  exit 1
fi
case "$JIT_API_CLIENT_ID" in
  ????????-????-????-????-????????????) ;;
  *) echo "JIT_API_CLIENT_ID must be the app registration's client id (a GUID), not '$JIT_API_CLIENT_ID'." >&2; exit 1 ;;
esac
echo "jit-broker: app registration $JIT_API_CLIENT_ID; scopes: ${JIT_ALLOWED_SCOPES:-this subscription}"
