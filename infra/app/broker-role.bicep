// The broker's custom ARM role: read what a grant needs to find a VM's NSGs, and write/delete security rules.
// Its actions live in broker-role-actions.json, which a test derives from what the broker really calls.
// Deliberately not Network Contributor, and no networkSecurityGroups/write: the broker never rewrites an NSG.
targetScope = 'subscription'

metadata description = 'Least-privilege custom role for the jit-broker identity.'

@description('Role name, unique in the tenant.')
param roleName string

@description('Scopes the role may be assigned at: /subscriptions/<id> or /subscriptions/<id>/resourceGroups/<name>.')
param assignableScopes array

var permissions = loadJsonContent('broker-role-actions.json')

resource brokerRole 'Microsoft.Authorization/roleDefinitions@2022-04-01' = {
  name: guid(subscription().id, roleName)
  properties: {
    roleName: roleName
    description: 'jit-broker: read VMs, NICs, public IPs, subnets and NSGs; create and delete NSG security rules. Nothing else.'
    type: 'CustomRole'
    assignableScopes: assignableScopes
    permissions: [
      {
        actions: permissions.actions
        notActions: permissions.notActions
        dataActions: permissions.dataActions
        notDataActions: permissions.notDataActions
      }
    ]
  }
}

output id string = brokerRole.id
output roleDefinitionGuid string = brokerRole.name
