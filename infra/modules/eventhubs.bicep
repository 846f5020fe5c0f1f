// The Event Hubs namespace and the hub-events event hub every IoT hub routes its lifecycle,
// twin-change and connection-state events to, with the consumer group the function reads.
// Identity only: IoT hubs send as Azure Event Hubs Data Sender (iothub.bicep), the function app
// receives as Azure Event Hubs Data Receiver (roles.bicep), so local (SAS) auth is off.

param location string
param namespaceName string
param eventHubName string
param consumerGroupName string
param partitionCount int

resource namespace 'Microsoft.EventHub/namespaces@2024-01-01' = {
  name: namespaceName
  location: location
  sku: {
    name: 'Standard'
    tier: 'Standard'
    capacity: 1
  }
  properties: {
    disableLocalAuth: true
    minimumTlsVersion: '1.2'
  }

  resource hub 'eventhubs' = {
    name: eventHubName
    properties: {
      partitionCount: partitionCount
      messageRetentionInDays: 1
    }

    resource group 'consumergroups' = {
      name: consumerGroupName
    }
  }
}

output namespaceName string = namespace.name
// The namespace host (<name>.servicebus.windows.net): REGISTRY_EVENTS__fullyQualifiedNamespace.
output fullyQualifiedNamespace string = replace(replace(namespace.properties.serviceBusEndpoint, 'https://', ''), ':443/', '')
output eventHubName string = namespace::hub.name
