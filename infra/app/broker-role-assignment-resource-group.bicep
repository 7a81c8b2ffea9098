// Assigns the broker's custom role to its identity on one resource group.
targetScope = 'resourceGroup'

metadata description = 'Broker role assignment at resource-group scope.'

@description('Name (GUID) of the broker\'s custom role definition; its id is formed in this subscription.')
param roleDefinitionGuid string

@description('Principal (object) id of the broker\'s managed identity.')
param principalId string

var roleDefinitionId = subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roleDefinitionGuid)

resource assignment 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(resourceGroup().id, principalId, roleDefinitionId)
  properties: {
    principalId: principalId
    principalType: 'ServicePrincipal'
    roleDefinitionId: roleDefinitionId
    description: 'jit-broker: open and close NSG rules for just-in-time access'
  }
}
