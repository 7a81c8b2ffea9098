#!/usr/bin/env bash
# Gives a user or a group one of jit-broker's app roles (JIT.Requester or JIT.Admin), through Microsoft Graph.
# Needs `az login` as an owner of the app registration's service principal (or a Cloud Application
# Administrator). Group assignment needs Entra ID P1 or above; members then get the role in their tokens.
#
# Usage: infra/scripts/assign-role.sh <user-principal-name | group-display-name> [JIT.Requester|JIT.Admin]
# Reads JIT_API_CLIENT_ID from the environment (or the azd environment).
set -euo pipefail

WHO="${1:?usage: assign-role.sh <user-upn | group-name> [JIT.Requester|JIT.Admin]}"
ROLE="${2:-JIT.Requester}"
APP_ID="${JIT_API_CLIENT_ID:-}"
if [ -z "$APP_ID" ] && command -v azd >/dev/null; then
  APP_ID="$(azd env get-value JIT_API_CLIENT_ID 2>/dev/null || true)"
fi
[ -n "$APP_ID" ] || { echo "set JIT_API_CLIENT_ID (see infra/scripts/app-registration.sh)" >&2; exit 1; }

GRAPH="$(az cloud show --query endpoints.microsoftGraphResourceId -o tsv)"
GRAPH="${GRAPH%/}/v1.0"
SP_ID="$(az ad sp show --id "$APP_ID" --query id -o tsv)"
ROLE_ID="$(az ad sp show --id "$APP_ID" --query "appRoles[?value=='${ROLE}'].id | [0]" -o tsv)"
[ -n "$ROLE_ID" ] || { echo "the app has no role '${ROLE}'" >&2; exit 1; }

if [[ "$WHO" == *@* ]]; then
  PRINCIPAL_ID="$(az ad user show --id "$WHO" --query id -o tsv)"
else
  PRINCIPAL_ID="$(az ad group show --group "$WHO" --query id -o tsv)"
fi

az rest --method POST --uri "${GRAPH}/servicePrincipals/${SP_ID}/appRoleAssignedTo" \
  --headers "Content-Type=application/json" \
  --body "{\"principalId\": \"${PRINCIPAL_ID}\", \"resourceId\": \"${SP_ID}\", \"appRoleId\": \"${ROLE_ID}\"}" \
  --output none
echo "${WHO} now holds ${ROLE} on jit-broker (${APP_ID}); it appears in tokens issued from now on."
