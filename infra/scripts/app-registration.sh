#!/usr/bin/env bash
# Creates or updates the Entra ID app registration that jit-broker's access tokens are issued for:
#   - app ID URI api://<client-id> and one delegated scope, user_impersonation;
#   - v2 access tokens (the broker's JIT_TOKEN_VERSIONS=2);
#   - the app roles JIT.Requester, JIT.Admin, JIT.Auditor and JIT.SourceOverride (assign them with
#     infra/scripts/assign-role.sh);
#   - the Azure CLI pre-authorized, so `az account get-access-token`, azd and the jit CLI get tokens without a
#     consent prompt;
#   - its service principal, with "assignment required" on, so only people given a role get a token at all;
#   - the web page's sign-in (docs/web.md): the deployed site's root, https://<app>.azurewebsites.net/, as a
#     single-page-application redirect URI (MSAL.js, authorization code + PKCE). The site is known from
#     $JIT_WEB_URL, or inside an azd project once `azd provision` has stored JIT_BROKER_URL: run the script
#     again after the first `azd up` (other SPA redirect URIs already registered are kept).
# Safe to run again: it finds the app by display name and converges it. Needs `az login` as someone who may
# create app registrations (Application Developer, or the tenant default that lets users register apps).
#
# Usage: infra/scripts/app-registration.sh [display-name]      (default: jit-broker, or $JIT_APP_NAME)
# Prints the values the deployment needs and, inside an azd project, stores them with `azd env set`.
set -euo pipefail

NAME="${1:-${JIT_APP_NAME:-jit-broker}}"
AZURE_CLI_CLIENT_ID="04b07795-8ddb-461a-bbee-02f9e1bf7b46"
# Role and scope ids need only be unique within this app; fixed ids make every run converge on the same app.
REQUESTER_ROLE_ID="65b266eb-4dc0-41c0-b88e-4d26035548ca"
ADMIN_ROLE_ID="cef49e19-830b-44c7-bc19-62eb1bba18bc"
AUDITOR_ROLE_ID="5f0c3a7e-2b9d-4c61-8a4e-7d2f1e6b9c30"
SOURCE_OVERRIDE_ROLE_ID="a3d8e5b1-6c47-4f2a-9e18-0b7c4d2f5a96"
SCOPE_ID="2150293c-325c-4278-811a-42d9bdf1b83d"
REQUESTER_ROLE="${JIT_REQUESTER_ROLE:-JIT.Requester}"
ADMIN_ROLE="${JIT_ADMIN_ROLE:-JIT.Admin}"
AUDITOR_ROLE="${JIT_AUDITOR_ROLE:-JIT.Auditor}"
SOURCE_OVERRIDE_ROLE="${JIT_SOURCE_OVERRIDE_ROLE:-JIT.SourceOverride}"

say() { printf '%s\n' "$*" >&2; }

command -v az >/dev/null || { say "az (the Azure CLI) is required: https://aka.ms/azcli"; exit 1; }
TENANT_ID="$(az account show --query tenantId -o tsv)" || { say "run 'az login' first"; exit 1; }
GRAPH="$(az cloud show --query endpoints.microsoftGraphResourceId -o tsv)"
GRAPH="${GRAPH%/}/v1.0"

APP_ID="$(az ad app list --filter "displayName eq '${NAME}'" --query "[0].appId" -o tsv)"
if [ -z "$APP_ID" ]; then
  say "creating app registration '${NAME}'"
  APP_ID="$(az ad app create --display-name "$NAME" --sign-in-audience AzureADMyOrg --query appId -o tsv)"
else
  say "updating app registration '${NAME}' (${APP_ID})"
fi
OBJECT_ID="$(az ad app show --id "$APP_ID" --query id -o tsv)"
APP_ID_URI="${JIT_API_APP_ID_URI:-api://${APP_ID}}"

API_SCOPES="[{
  \"id\": \"${SCOPE_ID}\", \"value\": \"user_impersonation\", \"type\": \"User\", \"isEnabled\": true,
  \"adminConsentDisplayName\": \"Use jit-broker as the signed-in user\",
  \"adminConsentDescription\": \"Lets the app call jit-broker on behalf of the signed-in user; what the user may do there depends on the app roles assigned to them.\",
  \"userConsentDisplayName\": \"Use jit-broker as you\",
  \"userConsentDescription\": \"Lets the app call jit-broker on your behalf.\"
}]"
APP_ROLES="[
  {\"id\": \"${REQUESTER_ROLE_ID}\", \"value\": \"${REQUESTER_ROLE}\", \"isEnabled\": true,
   \"allowedMemberTypes\": [\"User\"], \"displayName\": \"JIT requester\",
   \"description\": \"May ask jit-broker to open a port on an opted-in VM for their own address, within policy.\"},
  {\"id\": \"${ADMIN_ROLE_ID}\", \"value\": \"${ADMIN_ROLE}\", \"isEnabled\": true,
   \"allowedMemberTypes\": [\"User\"], \"displayName\": \"JIT administrator\",
   \"description\": \"Sees and revokes every grant in jit-broker.\"},
  {\"id\": \"${AUDITOR_ROLE_ID}\", \"value\": \"${AUDITOR_ROLE}\", \"isEnabled\": true,
   \"allowedMemberTypes\": [\"User\"], \"displayName\": \"JIT auditor\",
   \"description\": \"Reads jit-broker's audit trail; cannot open or revoke anything.\"},
  {\"id\": \"${SOURCE_OVERRIDE_ROLE_ID}\", \"value\": \"${SOURCE_OVERRIDE_ROLE}\", \"isEnabled\": true,
   \"allowedMemberTypes\": [\"User\"], \"displayName\": \"JIT source override\",
   \"description\": \"May name a source address other than their own (inside a VM's jit-sources allow-list when it has one).\"}
]"

patch() { az rest --method PATCH --uri "${GRAPH}/applications/${OBJECT_ID}" \
  --headers "Content-Type=application/json" --body "$1" --output none; }

# 1. Identifier URI, roles, scope and token version. The scope must exist before it can be pre-authorized.
patch "{\"identifierUris\": [\"${APP_ID_URI}\"], \"appRoles\": ${APP_ROLES},
  \"api\": {\"requestedAccessTokenVersion\": 2, \"oauth2PermissionScopes\": ${API_SCOPES}}}"
# 2. The Azure CLI as a pre-authorized client of that scope (no consent prompt for az, azd and jit).
patch "{\"api\": {\"requestedAccessTokenVersion\": 2, \"oauth2PermissionScopes\": ${API_SCOPES},
  \"preAuthorizedApplications\": [{\"appId\": \"${AZURE_CLI_CLIENT_ID}\", \"delegatedPermissionIds\": [\"${SCOPE_ID}\"]}]}}"

# 3. The service principal in this tenant; only users (or groups) assigned a role may get a token.
if ! az ad sp show --id "$APP_ID" --query id -o tsv >/dev/null 2>&1; then
  say "creating its service principal"
  az ad sp create --id "$APP_ID" --output none
fi
az ad sp update --id "$APP_ID" --set appRoleAssignmentRequired=true --output none

# 4. The web page: the site's root as a SPA redirect URI, added to those already there.
WEB_URL="${JIT_WEB_URL:-}"
if [ -z "$WEB_URL" ] && command -v azd >/dev/null; then
  WEB_URL="$(azd env get-value JIT_BROKER_URL 2>/dev/null || true)"
fi
WEB_REDIRECT_URI=""
if [ -n "$WEB_URL" ]; then
  case "$WEB_URL" in
    https://*) WEB_REDIRECT_URI="${WEB_URL%/}/" ;;
    *) say "JIT_WEB_URL must be the site's https:// address, not '${WEB_URL}'"; exit 1 ;;
  esac
  EXISTING="$(az ad app show --id "$APP_ID" --query "spa.redirectUris[]" -o tsv)"
  SPA_URIS=""
  FOUND=""
  while IFS= read -r uri; do
    [ -n "$uri" ] || continue
    [ "$uri" = "$WEB_REDIRECT_URI" ] && FOUND=1
    SPA_URIS="${SPA_URIS:+${SPA_URIS}, }\"${uri}\""
  done <<<"$EXISTING"
  [ -n "$FOUND" ] || SPA_URIS="${SPA_URIS:+${SPA_URIS}, }\"${WEB_REDIRECT_URI}\""
  patch "{\"spa\": {\"redirectUris\": [${SPA_URIS}]}}"
  say "the web page signs in at ${WEB_REDIRECT_URI}"
else
  say "no site address yet: after 'azd up', run this again (or set JIT_WEB_URL) to add the web page's sign-in"
fi

if command -v azd >/dev/null && azd env get-values >/dev/null 2>&1; then
  azd env set JIT_API_CLIENT_ID "$APP_ID" >/dev/null
  azd env set JIT_API_APP_ID_URI "$APP_ID_URI" >/dev/null
  say "stored JIT_API_CLIENT_ID and JIT_API_APP_ID_URI in the azd environment"
fi

cat <<OUT
JIT_TENANT_ID=${TENANT_ID}
JIT_API_CLIENT_ID=${APP_ID}
JIT_API_APP_ID_URI=${APP_ID_URI}
OUT
if [ -n "$WEB_REDIRECT_URI" ]; then
  printf 'JIT_WEB_REDIRECT_URI=%s\n' "$WEB_REDIRECT_URI"
fi
