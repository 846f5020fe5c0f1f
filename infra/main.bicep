// The whole deployment, into one resource group:
//   az deployment group create -g <rg> -f infra/main.bicep -p @infra/main.<env>.parameters.json
// Layout, parameters and what the offline checks cover: infra/README.md.
// Facts the shapes rest on: /work/shared/reference/azure-deploy.md and the sources cited per module.

@description('Short prefix of every resource name: 3 to 11 lowercase letters and digits.')
@minLength(3)
@maxLength(11)
param namePrefix string

@description('Region of every resource.')
param location string = resourceGroup().location

@description('The IoT hubs DPS allocates devices to; each name is unique within this deployment.')
@minLength(1)
param hubs array = [
  { name: 'hub1' }
  { name: 'hub2' }
]

@description('SKU of every hub (S1 or higher: routing of lifecycle and twin events needs a standard tier).')
@allowed([ 'S1', 'S2', 'S3' ])
param hubSku string = 'S1'

@description('Units per hub.')
@minValue(1)
param hubCapacity int = 1

@description('How DPS picks a hub for a device.')
@allowed([ 'Hashed', 'GeoLatency', 'Static' ])
param dpsAllocationPolicy string = 'Hashed'

@description('Partitions of the hub-events event hub.')
@minValue(1)
@maxValue(32)
param eventHubPartitionCount int = 4

@description('Upper bound of function app instances (Flex Consumption).')
@minValue(40)
@maxValue(1000)
param maximumInstanceCount int = 40

@description('Memory of one function app instance, in MB (Flex Consumption).')
@allowed([ 512, 2048, 4096 ])
param instanceMemoryMB int = 2048

@description('The secret status notifications are signed with (16+ characters); stored in Key Vault only.')
@secure()
@minLength(16)
param notifyWebhookSecret string

var suffix = uniqueString(resourceGroup().id)
// Storage accounts and key vaults: 3-24 characters, letters and digits (vault names: 24 at most).
var storageAccountName = take('${namePrefix}st${suffix}', 24)
var keyVaultName = take('${namePrefix}kv${suffix}', 24)
var functionAppName = '${namePrefix}-func-${suffix}'
var planName = '${namePrefix}-plan-${suffix}'
var eventHubsNamespaceName = '${namePrefix}-ehns-${suffix}'
var dpsName = '${namePrefix}-dps-${suffix}'
var logicAppName = '${namePrefix}-notify-${suffix}'
var logAnalyticsName = '${namePrefix}-log-${suffix}'
var appInsightsName = '${namePrefix}-appi-${suffix}'
var deploymentContainerName = 'app-package'
// The event hub and consumer group functions/OnHubEvents/function.json reads.
var eventHubName = 'hub-events'
var consumerGroupName = 'registry'
// The hub policy the handler's connection strings use: registry read/write and service connect.
var hubServicePolicy = 'registry-handler'
var hubNames = [for h in hubs: '${namePrefix}-${h.name}-${suffix}']

module monitoring 'modules/monitoring.bicep' = {
  name: 'monitoring'
  params: {
    location: location
    logAnalyticsName: logAnalyticsName
    appInsightsName: appInsightsName
  }
}

module storage 'modules/storage.bicep' = {
  name: 'storage'
  params: {
    location: location
    storageAccountName: storageAccountName
    deploymentContainerName: deploymentContainerName
  }
}

module eventHubs 'modules/eventhubs.bicep' = {
  name: 'eventhubs'
  params: {
    location: location
    namespaceName: eventHubsNamespaceName
    eventHubName: eventHubName
    consumerGroupName: consumerGroupName
    partitionCount: eventHubPartitionCount
  }
}

module iotHubs 'modules/iothub.bicep' = [for (h, i) in hubs: {
  name: 'iothub-${h.name}'
  params: {
    location: location
    hubName: hubNames[i]
    sku: hubSku
    capacity: hubCapacity
    eventHubsNamespaceName: eventHubs.outputs.namespaceName
    eventHubName: eventHubs.outputs.eventHubName
    servicePolicyName: hubServicePolicy
  }
}]

module dps 'modules/dps.bicep' = {
  name: 'dps'
  params: {
    location: location
    dpsName: dpsName
    allocationPolicy: dpsAllocationPolicy
    hubNames: hubNames
    hubHostNames: [for (h, i) in hubs: iotHubs[i].outputs.hostName]
  }
}

module logicApp 'modules/logicapp.bicep' = {
  name: 'logicapp'
  params: {
    location: location
    logicAppName: logicAppName
  }
}

module keyVault 'modules/keyvault.bicep' = {
  name: 'keyvault'
  params: {
    location: location
    keyVaultName: keyVaultName
    dpsName: dps.outputs.name
    logicAppName: logicApp.outputs.name
    notifyWebhookSecret: notifyWebhookSecret
    // The handler takes every hub's connection string in one setting, separated by '|'. Lambdas
    // cannot call listKeys (Bicep BCP248), so the list is built here with a loop and handed over
    // as a @secure() object: it never shows in the deployment's inputs or outputs.
    hubConnectionStrings: {
      values: [for (h, i) in hubs: 'HostName=${iotHubs[i].outputs.hostName};SharedAccessKeyName=${hubServicePolicy};SharedAccessKey=${listKeys(resourceId('Microsoft.Devices/IotHubs/IotHubKeys', hubNames[i], hubServicePolicy), '2023-06-30').primaryKey}']
    }
  }
}

module functionApp 'modules/functionapp.bicep' = {
  name: 'functionapp'
  params: {
    location: location
    planName: planName
    functionAppName: functionAppName
    storageAccountName: storage.outputs.name
    deploymentContainerName: deploymentContainerName
    appInsightsName: monitoring.outputs.appInsightsName
    maximumInstanceCount: maximumInstanceCount
    instanceMemoryMB: instanceMemoryMB
    eventHubsNamespaceFqdn: eventHubs.outputs.fullyQualifiedNamespace
    eventHubName: eventHubs.outputs.eventHubName
    dpsIdScope: dps.outputs.idScope
    dpsDeviceEndpoint: dps.outputs.globalEndpoint
    hubNames: hubNames
    hubHostNames: [for (h, i) in hubs: iotHubs[i].outputs.hostName]
    secretUris: keyVault.outputs.secretUris
  }
}

module roles 'modules/roles.bicep' = {
  name: 'roles'
  params: {
    principalId: functionApp.outputs.principalId
    storageAccountName: storage.outputs.name
    eventHubsNamespaceName: eventHubs.outputs.namespaceName
    eventHubName: eventHubs.outputs.eventHubName
    keyVaultName: keyVault.outputs.name
    appInsightsName: monitoring.outputs.appInsightsName
  }
}

output functionAppName string = functionApp.outputs.name
output functionAppUrl string = 'https://${functionApp.outputs.defaultHostName}/api'
output dpsName string = dps.outputs.name
output dpsIdScope string = dps.outputs.idScope
output dpsGlobalEndpoint string = dps.outputs.globalEndpoint
output hubHostNames array = [for (h, i) in hubs: iotHubs[i].outputs.hostName]
output eventHubsNamespace string = eventHubs.outputs.fullyQualifiedNamespace
output storageAccountName string = storage.outputs.name
output keyVaultName string = keyVault.outputs.name
output logicAppName string = logicApp.outputs.name
