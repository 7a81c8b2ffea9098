// The broker: a Python 3.11 function app on Flex Consumption running as the user-assigned identity, with every
// setting the broker reads (names as in local.settings.sample.json), identity-based host storage, and optional
// App Service Authentication in front (the broker still verifies every token itself).
metadata description = 'jit-broker function app (Flex Consumption, Python 3.11, user-assigned identity).'

@description('Function app name.')
param name string

@description('Azure region.')
param location string = resourceGroup().location

@description('Tags for the app.')
param tags object = {}

@description('azd service name this app hosts (azure.yaml services.<name>).')
param serviceName string = 'api'

@description('Flex Consumption plan id.')
param planId string

@description('Resource id of the user-assigned identity.')
param identityId string

@description('Client id of the user-assigned identity (AZURE_CLIENT_ID, AzureWebJobsStorage__clientId).')
param identityClientId string

@description('Storage account for host storage, the deployment package, the broker tables and its events queue.')
param storageAccountName string

@description('Blob container holding the deployment package.')
param deploymentContainerName string

@description('Application Insights connection string.')
param applicationInsightsConnectionString string

@description('Maximum Flex instances; a handful is plenty for a broker humans call.')
@minValue(1)
@maxValue(1000)
param maximumInstanceCount int = 40

@description('Memory per instance (MB).')
@allowed([
  512
  2048
  4096
])
param instanceMemoryMB int = 2048

@description('The broker\'s own settings (JIT_*), merged into the app settings.')
param brokerSettings object

@description('Put App Service Authentication in front of the broker (401 without a valid token).')
param enableAppServiceAuth bool = false

@description('Entra ID tenant of the broker\'s app registration.')
param tenantId string

@description('Entra ID authority host, e.g. https://login.microsoftonline.com.')
param authorityHost string

@description('Client id of the broker\'s app registration.')
param apiClientId string

@description('App ID URI of the broker\'s app registration.')
param apiAppIdUri string

@description('Client applications App Service Authentication lets through (their appid/azp); default Azure CLI.')
param allowedClientApplications array = []

var storageSuffix = environment().suffixes.storage
var blobServiceUri = 'https://${storageAccountName}.blob.${storageSuffix}'
var queueServiceUri = 'https://${storageAccountName}.queue.${storageSuffix}'

// Identity-based host storage: no connection string, no key. __credential/__clientId pick the user-assigned
// identity; the host builds its blob (state, timer locks), queue and table (diagnostic events) clients from these URIs.
var hostSettings = {
  AzureWebJobsStorage__credential: 'managedidentity'
  AzureWebJobsStorage__clientId: identityClientId
  AzureWebJobsStorage__blobServiceUri: blobServiceUri
  AzureWebJobsStorage__queueServiceUri: queueServiceUri
  AzureWebJobsStorage__tableServiceUri: 'https://${storageAccountName}.table.${storageSuffix}'
  // The notifications' queue trigger (function_app.py, connection "JitEvents"): an identity-based connection
  // to the events queue's account, as the user-assigned identity (docs/notifications.md).
  JitEvents__queueServiceUri: queueServiceUri
  JitEvents__credential: 'managedidentity'
  JitEvents__clientId: identityClientId
  APPLICATIONINSIGHTS_CONNECTION_STRING: applicationInsightsConnectionString
  APPLICATIONINSIGHTS_AUTHENTICATION_STRING: 'ClientId=${identityClientId};Authorization=AAD'
  // host.json's telemetryMode OpenTelemetry: the Python worker exports through OpenTelemetry too, so the
  // broker's records reach Application Insights once, correlated with the host's invocation.
  PYTHON_APPLICATIONINSIGHTS_ENABLE_TELEMETRY: 'true'
}

var authSettings = enableAppServiceAuth ? { WEBSITE_AUTH_AAD_ALLOWED_TENANTS: tenantId } : {}
var appSettings = union(hostSettings, brokerSettings, authSettings)

resource site 'Microsoft.Web/sites@2024-04-01' = {
  name: name
  location: location
  tags: union(tags, { 'azd-service-name': serviceName })
  kind: 'functionapp,linux'
  identity: {
    type: 'UserAssigned'
    userAssignedIdentities: {
      '${identityId}': {}
    }
  }
  properties: {
    // checkov:skip=CKV_AZURE_222: the broker is called from people's laptops over the internet; every call needs an Entra ID token that the broker verifies in code.
    // checkov:skip=CKV_AZURE_213: App Service health check pings every instance each minute, which would keep a scale-to-zero Flex app awake; GET /api/health serves external probes.
    // checkov:skip=CKV_AZURE_17: callers authenticate with Entra ID bearer tokens, not client certificates.
    // checkov:skip=CKV_AZURE_212: Flex Consumption scales out per demand; a failover minimum does not apply to the FC1 plan.
    serverFarmId: planId
    httpsOnly: true
    // Key Vault references (JIT_WEBHOOKS, JIT_WEBHOOK_SECRET) resolve as the user-assigned identity.
    keyVaultReferenceIdentity: identityId
    clientCertEnabled: false
    publicNetworkAccess: 'Enabled'
    siteConfig: {
      minTlsVersion: '1.2'
      scmMinTlsVersion: '1.2'
      ftpsState: 'Disabled'
      http20Enabled: true
      appSettings: [
        for setting in items(appSettings): {
          name: setting.key
          value: setting.value
        }
      ]
    }
    functionAppConfig: {
      deployment: {
        storage: {
          type: 'blobContainer'
          value: '${blobServiceUri}/${deploymentContainerName}'
          authentication: {
            type: 'UserAssignedIdentity'
            userAssignedIdentityResourceId: identityId
          }
        }
      }
      scaleAndConcurrency: {
        maximumInstanceCount: maximumInstanceCount
        instanceMemoryMB: instanceMemoryMB
      }
      runtime: {
        name: 'python'
        version: '3.11'
      }
    }
  }
}

// Deployments authenticate with Entra ID (azd, az); no FTP or basic-auth publishing credentials exist.
resource ftpPublishing 'Microsoft.Web/sites/basicPublishingCredentialsPolicies@2024-04-01' = {
  parent: site
  name: 'ftp'
  properties: {
    allow: false
  }
}

resource scmPublishing 'Microsoft.Web/sites/basicPublishingCredentialsPolicies@2024-04-01' = {
  parent: site
  name: 'scm'
  properties: {
    allow: false
  }
}

// Optional App Service Authentication: a first filter that answers 401 to calls without a valid token for the
// broker's app registration. It checks neither roles nor VM policy; the broker does, on every call, either way.
module easyAuth 'broker-auth.bicep' = if (enableAppServiceAuth) {
  name: '${name}-auth'
  params: {
    siteName: site.name
    tenantId: tenantId
    authorityHost: authorityHost
    apiClientId: apiClientId
    apiAppIdUri: apiAppIdUri
    allowedClientApplications: allowedClientApplications
  }
}

output id string = site.id
output name string = site.name
output defaultHostName string = site.properties.defaultHostName
