// Data-plane roles for the broker's identity, each at the narrowest scope that works:
//   Storage Blob Data Owner       host storage: AzureWebJobsStorage, timer singleton locks (blob leases), and the
//                                 Flex deployment package container (the docs name Owner for the host).
//   Storage Queue Data Contributor the host's queue connection (AzureWebJobsStorage__queueServiceUri), which the
//                                 Functions host expects beside blob; the notification events queue: the broker
//                                 sends to it, the queue trigger (JitEvents) reads, deletes and moves failed
//                                 messages to its poison queue; scoped to this one account.
//   Storage Table Data Contributor the broker's grants/expiry/audit tables, and the host's diagnostic events table.
//   Monitoring Metrics Publisher  telemetry into Application Insights, whose local (key) auth is off.
//   Key Vault Secrets User        the notification secrets the app settings reference (JIT_WEBHOOKS,
//                                 JIT_WEBHOOK_SECRET); read only, on the broker's own vault.
metadata description = 'Storage, Key Vault and monitoring data roles for the broker identity.'

@description('Storage account the host and the broker use.')
param storageAccountName string

@description('Application Insights component the app reports to.')
param applicationInsightsName string

@description('Principal (object) id of the broker\'s managed identity.')
param principalId string

@description('Key Vault holding the notification secrets.')
param keyVaultName string

var roleIds = {
  storageBlobDataOwner: 'b7e6dc6d-f1e8-4753-8033-0f276bb0955b'
  storageQueueDataContributor: '974c5e8b-45b9-4653-ba55-5f855dd0fb88'
  storageTableDataContributor: '0a9a7e1f-b9d0-4cc4-a60d-0319b160aaa3'
  monitoringMetricsPublisher: '3913510d-42f4-4e42-8a64-420c390055eb'
  keyVaultSecretsUser: '4633458b-17de-408a-b874-0445c86b69e6'
}

resource storage 'Microsoft.Storage/storageAccounts@2023-05-01' existing = {
  name: storageAccountName
}

resource applicationInsights 'Microsoft.Insights/components@2020-02-02' existing = {
  name: applicationInsightsName
}

resource keyVault 'Microsoft.KeyVault/vaults@2023-07-01' existing = {
  name: keyVaultName
}

resource blobOwner 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(storage.id, principalId, roleIds.storageBlobDataOwner)
  scope: storage
  properties: {
    principalId: principalId
    principalType: 'ServicePrincipal'
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roleIds.storageBlobDataOwner)
  }
}

resource queueContributor 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(storage.id, principalId, roleIds.storageQueueDataContributor)
  scope: storage
  properties: {
    principalId: principalId
    principalType: 'ServicePrincipal'
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roleIds.storageQueueDataContributor)
  }
}

resource tableContributor 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(storage.id, principalId, roleIds.storageTableDataContributor)
  scope: storage
  properties: {
    principalId: principalId
    principalType: 'ServicePrincipal'
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roleIds.storageTableDataContributor)
  }
}

resource metricsPublisher 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(applicationInsights.id, principalId, roleIds.monitoringMetricsPublisher)
  scope: applicationInsights
  properties: {
    principalId: principalId
    principalType: 'ServicePrincipal'
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roleIds.monitoringMetricsPublisher)
  }
}

resource secretsUser 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(keyVault.id, principalId, roleIds.keyVaultSecretsUser)
  scope: keyVault
  properties: {
    principalId: principalId
    principalType: 'ServicePrincipal'
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roleIds.keyVaultSecretsUser)
  }
}
