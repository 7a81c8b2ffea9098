// Assigns the broker's custom role to its identity on one resource group.
targetScope = 'resourceGroup'

metadata description = 'Broker role assignment at resource-group scope.'

@description('Resource id of the broker\'s custom role definition.')
param roleDefinitionId string

@description('Principal (object) id of the broker\'s managed identity.')
param principalId string

resource assignment 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(resourceGroup().id, principalId, roleDefinitionId)
  properties: {
    principalId: principalId
    principalType: 'ServicePrincipal'
    roleDefinitionId: roleDefinitionId
    description: 'jit-broker: open and close NSG rules for just-in-time access'
  }
}
