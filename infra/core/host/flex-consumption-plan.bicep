// A Flex Consumption plan (Linux). One function app per plan.
metadata description = 'Flex Consumption (FC1) App Service plan.'

@description('Plan name.')
param name string

@description('Azure region.')
param location string = resourceGroup().location

@description('Tags for the plan.')
param tags object = {}

@description('Spread instances across availability zones (the platform then keeps two always-ready instances per function group, billed as such).')
param zoneRedundant bool = false

resource plan 'Microsoft.Web/serverfarms@2024-04-01' = {
  name: name
  location: location
  tags: tags
  kind: 'functionapp'
  sku: {
    tier: 'FlexConsumption'
    name: 'FC1'
  }
  properties: {
    // checkov:skip=CKV_AZURE_225: zone redundancy on Flex keeps at least two always-ready instances billed around the clock; off by default for a broker whose rules carry their own expiry, on with zoneRedundant=true.
    reserved: true
    zoneRedundant: zoneRedundant
  }
}

output id string = plan.id
output name string = plan.name
