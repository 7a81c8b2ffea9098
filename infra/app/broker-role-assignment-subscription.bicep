// Assigns the broker's custom role to its identity on one whole subscription.
targetScope = 'subscription'

metadata description = 'Broker role assignment at subscription scope.'

@description('Resource id of the broker\'s custom role definition.')
param roleDefinitionId string

@description('Principal (object) id of the broker\'s managed identity.')
param principalId string

resource assignment 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(subscription().id, principalId, roleDefinitionId)
  properties: {
    principalId: principalId
    principalType: 'ServicePrincipal'
    roleDefinitionId: roleDefinitionId
    description: 'jit-broker: open and close NSG rules for just-in-time access'
  }
}
