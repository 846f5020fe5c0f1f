// One IoT hub, its routing identity, and the role that lets it send to hub-events.
//
// Routing: DeviceLifecycleEvents, TwinChangeEvents and DeviceConnectionStateEvents go to a custom
// Event Hubs endpoint (hub-events); the fallback route keeps device telemetry on the built-in
// 'events' endpoint for other consumers. Shapes: Microsoft.Devices/IotHubs 2023-06-30
// (Azure/azure-quickstart-templates quickstarts/microsoft.devices/iothub-auto-route-messages).
//
// Identity: the endpoint authenticates with a managed identity. The role must be in place before
// the endpoint is added (MicrosoftDocs/azure-docs articles/iot-hub/iot-hub-managed-identity.md,
// "Configure message routing with managed identities"), which a system-assigned identity cannot
// satisfy in one deployment: the hub gets a user-assigned identity of its own, created and granted
// Azure Event Hubs Data Sender on the event hub first.

param location string
param hubName string
param sku string
param capacity int
param eventHubsNamespaceName string
param eventHubName string
@description('Shared access policy of the handler: registry read/write and service connect, no device connect.')
param servicePolicyName string

// Built-in role: Azure Event Hubs Data Sender.
var eventHubsDataSender = '2b629674-e913-4c01-ae53-ef4638d8f975'
var endpointName = 'registry-events'
// The sources the handler consumes (handler: OnHubEvents; docs/handler.md "Event functions").
var eventSources = [
  'DeviceLifecycleEvents'
  'TwinChangeEvents'
  'DeviceConnectionStateEvents'
]

resource namespace 'Microsoft.EventHub/namespaces@2024-01-01' existing = {
  name: eventHubsNamespaceName

  resource hub 'eventhubs' existing = {
    name: eventHubName
  }
}

resource routingIdentity 'Microsoft.ManagedIdentity/userAssignedIdentities@2023-01-31' = {
  name: '${hubName}-routing'
  location: location
}

resource senderRole 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(namespace::hub.id, routingIdentity.id, eventHubsDataSender)
  scope: namespace::hub
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', eventHubsDataSender)
    principalId: routingIdentity.properties.principalId
    principalType: 'ServicePrincipal'
  }
}

resource hub 'Microsoft.Devices/IotHubs@2023-06-30' = {
  name: hubName
  location: location
  sku: {
    name: sku
    capacity: capacity
  }
  identity: {
    type: 'UserAssigned'
    userAssignedIdentities: {
      '${routingIdentity.id}': {}
    }
  }
  properties: {
    // The built-in policies, plus the handler's least-privilege one. DPS links with iothubowner
    // (modules/dps.bicep); the handler's connection strings use servicePolicyName.
    authorizationPolicies: [
      {
        keyName: 'iothubowner'
        rights: 'RegistryRead, RegistryWrite, ServiceConnect, DeviceConnect'
      }
      {
        keyName: 'service'
        rights: 'ServiceConnect'
      }
      {
        keyName: 'device'
        rights: 'DeviceConnect'
      }
      {
        keyName: 'registryRead'
        rights: 'RegistryRead'
      }
      {
        keyName: 'registryReadWrite'
        rights: 'RegistryRead, RegistryWrite'
      }
      {
        keyName: servicePolicyName
        rights: 'RegistryRead, RegistryWrite, ServiceConnect'
      }
    ]
    eventHubEndpoints: {
      events: {
        retentionTimeInDays: 1
        partitionCount: 4
      }
    }
    routing: {
      endpoints: {
        eventHubs: [
          {
            name: endpointName
            authenticationType: 'identityBased'
            identity: {
              userAssignedIdentity: routingIdentity.id
            }
            endpointUri: 'sb://${replace(replace(namespace.properties.serviceBusEndpoint, 'https://', ''), ':443/', '')}'
            entityPath: eventHubName
            subscriptionId: subscription().subscriptionId
            resourceGroup: resourceGroup().name
          }
        ]
      }
      routes: [for source in eventSources: {
        name: 'registry-${source}'
        source: source
        condition: 'true'
        endpointNames: [
          endpointName
        ]
        isEnabled: true
      }]
      fallbackRoute: {
        name: '$fallback'
        source: 'DeviceMessages'
        condition: 'true'
        endpointNames: [
          'events'
        ]
        isEnabled: true
      }
    }
  }
  dependsOn: [
    senderRole
  ]
}

output name string = hub.name
output hostName string = hub.properties.hostName
