// A user-assigned managed identity: the one principal the broker acts as (ARM, Table Storage, host storage).
metadata description = 'User-assigned managed identity.'

@description('Name of the identity.')
param name string

@description('Azure region.')
param location string = resourceGroup().location

@description('Tags for the identity.')
param tags object = {}

resource identity 'Microsoft.ManagedIdentity/userAssignedIdentities@2023-01-31' = {
  name: name
  location: location
  tags: tags
}

output id string = identity.id
output name string = identity.name
output clientId string = identity.properties.clientId
output principalId string = identity.properties.principalId
