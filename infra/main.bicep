// jit-broker, deployed by `azd up`: a resource group holding the broker (Flex Consumption function app), its
// user-assigned identity, an identity-only storage account with the broker's tables, and monitoring; plus a
// least-privilege custom role for the identity, assigned at the scopes the broker may open ports in.
targetScope = 'subscription'

metadata description = 'jit-broker: just-in-time network access to Azure VMs.'

@minLength(1)
@maxLength(64)
@description('azd environment name; names the resource group and seeds every resource name.')
param environmentName string

@minLength(1)
@description('Region for every resource. Must offer Flex Consumption.')
@metadata({
  azd: {
    type: 'location'
  }
})
param location string

@description('Resource group name; default rg-<environmentName>.')
param resourceGroupName string = ''

// --- Who the broker's tokens are for (the app registration from infra/scripts/app-registration.sh) ---

@minLength(36)
@maxLength(36)
@description('Client (application) id of the broker\'s Entra ID app registration.')
param apiClientId string

@description('App ID URI of the app registration; default api://<apiClientId>.')
param apiAppIdUri string = ''

@description('Tenant that issues the broker\'s tokens; default the subscription\'s tenant.')
param apiTenantId string = subscription().tenantId

@description('Entra ID authority host (sovereign clouds differ).')
param authorityHost string = 'https://login.microsoftonline.com'

@description('Token versions the broker accepts; the app registration requests v2 tokens.')
@allowed([
  '2'
  '1'
  '1,2'
])
param tokenVersions string = '2'

@description('Issuer of v1 tokens when tokenVersions allows 1; empty: https://sts.windows.net/<tenant>/.')
param v1Issuer string = ''

@description('App role that may request access for itself.')
param requesterRole string = 'JIT.Requester'

@description('App role that sees and revokes every grant.')
param adminRole string = 'JIT.Admin'

@description('App role that reads the audit trail (GET /api/v1/audit) but cannot revoke.')
param auditorRole string = 'JIT.Auditor'

@description('App role that approves grants on VMs tagged jit-approval=required (unless a VM names its own with jit-approvers).')
param approverRole string = 'JIT.Approver'

@description('How long a request for a VM that needs approval waits for an approver before it expires (ISO 8601).')
param approvalWait string = 'PT1H'

@description('How long an approval may take to open the door before the grant fails and needs a new approval (ISO 8601).')
param approvalUseWindow string = 'PT15M'

@minValue(0)
@maxValue(1440)
@description('Minutes before a door closes when the "expiring" notification goes out (0: none).')
param expiringMinutes int = 10

@description('The delegated scope (its value, as the token\'s scp claim carries it) users consent to for the broker\'s API.')
param apiScope string = 'user_impersonation'

@description('Client app ids allowed to call the broker (the token\'s azp/appid); empty allows any client app of the tenant.')
param allowedClientApps array = []

@description('Client id the web page signs in with (MSAL.js, docs/web.md); empty: the broker\'s own app registration, whose SPA redirect URI app-registration.sh adds.')
param webClientId string = ''

@description('Client apps App Service Authentication lets through; default the Azure CLI (jit, az, azd use it).')
param allowedClientApplications array = [
  '04b07795-8ddb-461a-bbee-02f9e1bf7b46'
]

@description('Put App Service Authentication in front of the broker as well (the broker checks every token either way).')
param enableAppServiceAuth bool = false

// --- Where and how the broker may open ports ---

@description('Comma-separated scopes the broker may open ports in and holds its role at: /subscriptions/<id> or /subscriptions/<id>/resourceGroups/<name>. Empty: this subscription.')
param jitScopes string = ''

@minValue(100)
@maxValue(4096)
@description('Lowest NSG priority the broker uses; its band must sit above (numerically below) your deny rules.')
param priorityMin int = 100

@minValue(100)
@maxValue(4096)
@description('Highest NSG priority the broker uses.')
param priorityMax int = 199

@description('Grant duration when the caller names none (ISO 8601).')
param defaultDuration string = 'PT1H'

@description('Longest single grant or extension (ISO 8601).')
param maxDuration string = 'PT4H'

@description('Longest a grant may last with all its extensions (ISO 8601).')
param maxTotalDuration string = 'PT8H'

@minValue(8)
@maxValue(32)
@description('Widest IPv4 source prefix a caller may ask for (32 = one address).')
param maxSourcePrefixV4 int = 32

@minValue(32)
@maxValue(128)
@description('Widest IPv6 source prefix a caller may ask for (128 = one address).')
param maxSourcePrefixV6 int = 128

@minValue(0)
@maxValue(3600)
@description('Seconds the broker caches a VM\'s network topology.')
param topologyCacheSeconds int = 60

@description('App role that may name a source other than the caller\'s own address (on any VM; inside its jit-sources allow-list when it has one).')
param sourceOverrideRole string = 'JIT.SourceOverride'

@description('Let private ranges (RFC 1918, 100.64.0.0/10, fc00::/7) be sources: only for callers who reach the VMs over a private network (VPN, ExpressRoute).')
param allowPrivateSources bool = false

@minValue(1)
@maxValue(1000)
@description('Most open grants one person may hold at once.')
param maxOpenGrantsPerPrincipal int = 10

@minValue(1)
@maxValue(100)
@description('Most distinct sources one person\'s open grants may let in at once.')
param maxSourcesPerPrincipal int = 3

@description('Six-field NCRONTAB schedule (UTC) of the sweeper that closes expired grants.')
param sweepSchedule string = '0 * * * * *'

@minValue(1)
@maxValue(5000)
@description('Most grants one sweep handles.')
param sweepBatch int = 200

@description('How long a grant may stay pending (recorded, rules not yet written) before the sweeper undoes it (ISO 8601).')
param pendingGrace string = 'PT2M'

@description('Seconds between polls of an ARM long-running operation (a rule write or delete).')
param armPollSeconds string = '1'

@description('Seconds the broker waits for one ARM long-running operation (an NSG write) before giving up on it.')
param armTimeoutSeconds string = '60'

@description('Seconds a request waits for its NSG writes before answering 202 (pending, poll the grant); at most 25.')
param answerBudgetSeconds string = '20'

@description('Seconds one sweep may work before it stops and leaves the rest to the next run; below functionTimeout (120).')
param sweepBudgetSeconds string = '90'

@description('Prefix of the broker\'s tables: <prefix>grants, <prefix>expiry, <prefix>audit.')
@minLength(1)
@maxLength(20)
param tablePrefix string = 'jit'

@minValue(1)
@maxValue(1000)
@description('Most Flex instances the broker scales to.')
param maximumInstanceCount int = 40

@description('Spread the broker across availability zones (billed as two always-ready instances per function group).')
param zoneRedundant bool = false

@description('Storage replication for host state and the broker\'s tables (grants, expiry index, audit trail).')
@allowed([
  'Standard_ZRS'
  'Standard_GZRS'
  'Standard_RAGZRS'
  'Standard_LRS'
])
param storageSkuName string = 'Standard_ZRS'

@description('E-mail address the broker\'s alerts notify (azd env JIT_ALERT_EMAIL); empty: no action group, the alerts only show in Azure Monitor.')
param alertEmail string = ''

// --- Notifications (docs/notifications.md): events through a Storage queue to webhooks ---

@description('Queue the lifecycle events go through (the Functions host adds <name>-poison for failed deliveries).')
@minLength(3)
@maxLength(56)
param eventsQueue string = 'jit-events'

@secure()
@description('JIT_WEBHOOKS: a JSON list of {"url", "format": "generic"|"teams"|"slack", "events"}; empty: notifications off. Kept in Key Vault (its URLs carry their channels\' tokens).')
param webhooks string = ''

@secure()
@description('JIT_WEBHOOK_SECRET: the HMAC-SHA256 key that signs generic webhooks (at least 16 characters). Kept in Key Vault.')
param webhookSecret string = ''

@description('The broker\'s public URL for the approve link in notifications; empty: https://<function app>.azurewebsites.net.')
param publicUrl string = ''

var resourceToken = toLower(uniqueString(subscription().id, environmentName, location))
var tags = {
  'azd-env-name': environmentName
  app: 'jit-broker'
}
var functionAppName = 'func-jit-${resourceToken}'
var keyVaultName = 'kv-jit-${resourceToken}'
var webhooksSecretName = 'jit-webhooks'
var webhookSecretName = 'jit-webhook-secret'
var webhooksReference = '@Microsoft.KeyVault(VaultName=${keyVaultName};SecretName=${webhooksSecretName})'
var webhookSecretReference = '@Microsoft.KeyVault(VaultName=${keyVaultName};SecretName=${webhookSecretName})'
var webhooksToStore = empty(webhooks) ? {} : { '${webhooksSecretName}': webhooks }
var webhookSecretToStore = empty(webhookSecret) ? {} : { '${webhookSecretName}': webhookSecret }
var deploymentContainerName = 'app-package-${take(functionAppName, 32)}-${take(resourceToken, 7)}'
var appIdUri = empty(apiAppIdUri) ? 'api://${apiClientId}' : apiAppIdUri
var requestedScopes = filter(split(jitScopes, ','), s => !empty(s))
var effectiveScopes = empty(requestedScopes) ? [subscription().id] : requestedScopes
var subscriptionScopes = filter(effectiveScopes, s => length(split(s, '/')) == 3)
var resourceGroupScopes = filter(effectiveScopes, s => length(split(s, '/')) == 5)

resource rg 'Microsoft.Resources/resourceGroups@2024-03-01' = {
  name: empty(resourceGroupName) ? 'rg-${environmentName}' : resourceGroupName
  location: location
  tags: tags
}

module identity 'core/identity/user-assigned-identity.bicep' = {
  name: 'identity'
  scope: rg
  params: {
    name: 'id-jit-${resourceToken}'
    location: location
    tags: tags
  }
}

module monitoring 'core/monitor/monitoring.bicep' = {
  name: 'monitoring'
  scope: rg
  params: {
    logAnalyticsName: 'log-jit-${resourceToken}'
    applicationInsightsName: 'appi-jit-${resourceToken}'
    location: location
    tags: tags
  }
}

module storage 'core/storage/storage-account.bicep' = {
  name: 'storage'
  scope: rg
  params: {
    name: 'stjit${resourceToken}'
    location: location
    tags: tags
    skuName: storageSkuName
    containers: [
      deploymentContainerName
    ]
    tables: [
      '${tablePrefix}grants'
      '${tablePrefix}expiry'
      '${tablePrefix}audit'
    ]
    queues: [
      eventsQueue
      '${eventsQueue}-poison'
    ]
  }
}

// The notification secrets, written only when given (azd env JIT_WEBHOOKS, JIT_WEBHOOK_SECRET); the app settings
// reference them, so an operator may also set them with az keyvault secret set.
module keyVault 'core/security/key-vault.bicep' = {
  name: 'key-vault'
  scope: rg
  params: {
    name: keyVaultName
    location: location
    tags: tags
    secrets: union(webhooksToStore, webhookSecretToStore)
  }
}

module rbac 'app/rbac.bicep' = {
  name: 'rbac'
  scope: rg
  params: {
    storageAccountName: storage.outputs.name
    applicationInsightsName: monitoring.outputs.applicationInsightsName
    principalId: identity.outputs.principalId
    keyVaultName: keyVault.outputs.name
  }
}

module plan 'core/host/flex-consumption-plan.bicep' = {
  name: 'plan'
  scope: rg
  params: {
    name: 'plan-jit-${resourceToken}'
    location: location
    tags: tags
    zoneRedundant: zoneRedundant
  }
}

// Every setting the broker reads, named as in local.settings.sample.json. Not set here: FUNCTIONS_WORKER_RUNTIME
// (Flex takes the runtime from functionAppConfig), AzureWebJobsStorage (identity-based __* settings instead) and
// JIT_TABLE_CONNECTION_STRING (no keys: the broker reaches its tables by identity through JIT_TABLE_ENDPOINT).
var brokerSettings = {
  JIT_AUTHORITY_HOST: authorityHost
  JIT_TENANT_ID: apiTenantId
  JIT_API_CLIENT_ID: apiClientId
  JIT_API_APP_ID_URI: appIdUri
  JIT_TOKEN_VERSIONS: tokenVersions
  JIT_V1_ISSUER: v1Issuer
  JIT_REQUESTER_ROLE: requesterRole
  JIT_ADMIN_ROLE: adminRole
  JIT_AUDITOR_ROLE: auditorRole
  JIT_APPROVER_ROLE: approverRole
  JIT_APPROVAL_WAIT: approvalWait
  JIT_APPROVAL_USE_WINDOW: approvalUseWindow
  JIT_EXPIRING_MINUTES: string(expiringMinutes)
  JIT_API_SCOPE: apiScope
  JIT_ALLOWED_CLIENT_APPS: join(allowedClientApps, ',')
  JIT_KEY_REFRESH_COOLDOWN_SECONDS: '300'
  JIT_WEB_CLIENT_ID: webClientId
  JIT_ALLOWED_SCOPES: join(effectiveScopes, ',')
  JIT_PRIORITY_MIN: string(priorityMin)
  JIT_PRIORITY_MAX: string(priorityMax)
  JIT_DEFAULT_DURATION: defaultDuration
  JIT_MAX_DURATION: maxDuration
  JIT_MAX_TOTAL_DURATION: maxTotalDuration
  JIT_MAX_SOURCE_PREFIX_V4: string(maxSourcePrefixV4)
  JIT_MAX_SOURCE_PREFIX_V6: string(maxSourcePrefixV6)
  JIT_CLIENT_ADDRESS_FROM: 'x-forwarded-for'
  JIT_TOPOLOGY_CACHE_SECONDS: string(topologyCacheSeconds)
  JIT_SOURCE_OVERRIDE_ROLE: sourceOverrideRole
  JIT_ALLOW_PRIVATE_SOURCES: allowPrivateSources ? 'true' : 'false'
  // Lab and test networks only: in Azure a source is a global address (or a private one, allowPrivateSources).
  JIT_EXTRA_SOURCE_RANGES: ''
  JIT_MAX_OPEN_GRANTS_PER_PRINCIPAL: string(maxOpenGrantsPerPrincipal)
  JIT_MAX_SOURCES_PER_PRINCIPAL: string(maxSourcesPerPrincipal)
  JIT_ARM_ENDPOINT: environment().resourceManager
  JIT_ARM_POLL_SECONDS: armPollSeconds
  JIT_ARM_TIMEOUT_SECONDS: armTimeoutSeconds
  JIT_ANSWER_BUDGET_SECONDS: answerBudgetSeconds
  JIT_TABLE_ENDPOINT: 'https://${storage.outputs.name}.table.${environment().suffixes.storage}'
  JIT_TABLE_PREFIX: tablePrefix
  AZURE_CLIENT_ID: identity.outputs.clientId
  JIT_SWEEP_SCHEDULE: sweepSchedule
  JIT_SWEEP_BATCH: string(sweepBatch)
  JIT_PENDING_GRACE: pendingGrace
  JIT_SWEEP_BUDGET_SECONDS: sweepBudgetSeconds
  // Notifications: the events queue by identity; the webhooks and their signing key as Key Vault references
  // (empty when not given: notifications off). JIT_QUEUE_CONNECTION_STRING is the lab's (Azurite's) way in:
  // empty here, no keys in Azure.
  JIT_EVENTS_QUEUE: eventsQueue
  JIT_QUEUE_ENDPOINT: 'https://${storage.outputs.name}.queue.${environment().suffixes.storage}'
  JIT_QUEUE_CONNECTION_STRING: ''
  JIT_WEBHOOKS: empty(webhooks) ? '' : webhooksReference
  JIT_WEBHOOK_SECRET: empty(webhookSecret) ? '' : webhookSecretReference
  JIT_PUBLIC_URL: empty(publicUrl) ? 'https://${functionAppName}.azurewebsites.net' : publicUrl
}

module broker 'app/broker.bicep' = {
  name: 'broker'
  scope: rg
  dependsOn: [
    rbac
    keyVault
  ]
  params: {
    name: functionAppName
    location: location
    tags: tags
    planId: plan.outputs.id
    identityId: identity.outputs.id
    identityClientId: identity.outputs.clientId
    storageAccountName: storage.outputs.name
    deploymentContainerName: deploymentContainerName
    applicationInsightsConnectionString: monitoring.outputs.applicationInsightsConnectionString
    maximumInstanceCount: maximumInstanceCount
    brokerSettings: brokerSettings
    enableAppServiceAuth: enableAppServiceAuth
    tenantId: apiTenantId
    authorityHost: authorityHost
    apiClientId: apiClientId
    apiAppIdUri: appIdUri
    allowedClientApplications: allowedClientApplications
  }
}

// Alerts, the action group that e-mails them, and the operations workbook (docs/operations.md). No roles.
module operations 'app/operations.bicep' = {
  name: 'operations'
  scope: rg
  params: {
    location: location
    tags: tags
    baseName: 'jit-${resourceToken}'
    applicationInsightsName: monitoring.outputs.applicationInsightsName
    alertEmail: alertEmail
  }
}

module brokerRole 'app/broker-role.bicep' = {
  name: 'broker-role'
  params: {
    roleName: 'jit-broker NSG rule operator (${environmentName}-${resourceToken})'
    assignableScopes: effectiveScopes
  }
}

module subscriptionAssignments 'app/broker-role-assignment-subscription.bicep' = [
  for allowedScope in subscriptionScopes: {
    name: 'broker-role-${uniqueString(allowedScope)}'
    scope: subscription(split(allowedScope, '/')[2])
    params: {
      roleDefinitionGuid: brokerRole.outputs.roleDefinitionGuid
      principalId: identity.outputs.principalId
    }
  }
]

module resourceGroupAssignments 'app/broker-role-assignment-resource-group.bicep' = [
  for allowedScope in resourceGroupScopes: {
    name: 'broker-role-${uniqueString(allowedScope)}'
    scope: resourceGroup(split(allowedScope, '/')[2], split(allowedScope, '/')[4])
    params: {
      roleDefinitionGuid: brokerRole.outputs.roleDefinitionGuid
      principalId: identity.outputs.principalId
    }
  }
]

output AZURE_LOCATION string = location
output AZURE_TENANT_ID string = apiTenantId
output AZURE_RESOURCE_GROUP string = rg.name
output AZURE_FUNCTION_NAME string = broker.outputs.name
output JIT_BROKER_URL string = 'https://${broker.outputs.defaultHostName}'
output JIT_API_APP_ID_URI string = appIdUri
output JIT_ALLOWED_SCOPES string = join(effectiveScopes, ',')
output JIT_BROKER_PRINCIPAL_ID string = identity.outputs.principalId
output JIT_BROKER_ROLE_ID string = brokerRole.outputs.id
output JIT_ALERT_ACTION_GROUP_ID string = operations.outputs.actionGroupId
output JIT_OPERATIONS_WORKBOOK_ID string = operations.outputs.workbookId
output JIT_KEY_VAULT_NAME string = keyVault.outputs.name
output JIT_EVENTS_QUEUE string = eventsQueue
