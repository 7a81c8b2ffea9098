// The broker's Key Vault: the notification secrets (the webhook list, whose URLs carry their channels' tokens,
// and the HMAC key that signs generic webhooks). The app reads them through Key Vault references with its
// user-assigned identity (Key Vault Secrets User, app/rbac.bicep); Azure RBAC only, no access policies.
metadata description = 'Key Vault (Azure RBAC) holding the broker\'s notification secrets.'

@description('Key Vault name (3-24 letters, digits and hyphens).')
@minLength(3)
@maxLength(24)
param name string

@description('Azure region.')
param location string = resourceGroup().location

@description('Tags for the vault.')
param tags object = {}

@description('Secrets to write, name -> value; an empty object writes none (set them with az keyvault secret set).')
@secure()
param secrets object = {}

@description('Days a deleted vault or secret can be recovered.')
@minValue(7)
@maxValue(90)
param softDeleteRetentionInDays int = 7

resource vault 'Microsoft.KeyVault/vaults@2023-07-01' = {
  name: name
  location: location
  tags: tags
  properties: {
    // checkov:skip=CKV_AZURE_109: a Flex Consumption app without VNet integration resolves Key Vault references over the public endpoint (App Service is not a trusted service for the vault firewall); reads need the identity's Entra ID token and RBAC role, and docs/deploy.md shows the private-endpoint hardening.
    // checkov:skip=CKV_AZURE_189: same reason as CKV_AZURE_109: public network access, identity-only authorization.
    // checkov:skip=CKV_AZURE_110: the vault holds two rotatable notification secrets; purge protection would block azd down --purge and a redeploy of the same environment for the whole retention period.
    // checkov:skip=CKV_AZURE_42: soft delete is on (softDeleteRetentionInDays); only purge protection is off, for the reason given for CKV_AZURE_110.
    tenantId: subscription().tenantId
    sku: {
      family: 'A'
      name: 'standard'
    }
    enableRbacAuthorization: true
    enableSoftDelete: true
    softDeleteRetentionInDays: softDeleteRetentionInDays
    enabledForDeployment: false
    enabledForDiskEncryption: false
    enabledForTemplateDeployment: false
    publicNetworkAccess: 'Enabled'
    networkAcls: {
      bypass: 'AzureServices'
      defaultAction: 'Allow'
    }
  }
}

resource vaultSecrets 'Microsoft.KeyVault/vaults/secrets@2023-07-01' = [
  for secret in items(secrets): {
    parent: vault
    name: secret.key
    properties: {
      // checkov:skip=CKV_AZURE_41: the webhook list and its signing key are rotated by the operator together with the receivers; an expiry would silently stop every notification.
      value: secret.value
      contentType: 'text/plain'
    }
  }
]

output id string = vault.id
output name string = vault.name
output uri string = vault.properties.vaultUri
