// The storage account: host storage of the function app (identity-based), the registry's tables
// and the Flex Consumption deployment container. Shared-key access is off: everything reaches it
// with Entra identities (roles.bicep).

param location string
param storageAccountName string
param deploymentContainerName string

// Table names: handler/src/storage/tables.rs, with the default REGISTRY_TABLE_PREFIX 'Registry'.
// The handler creates missing tables itself; creating them here makes the layout visible.
var registryTables = [
  'RegistryDevices'
  'RegistryDeviceIds'
  'RegistryIndex'
  'RegistryDeadLetters'
  'RegistryOutbox'
]

resource account 'Microsoft.Storage/storageAccounts@2023-05-01' = {
  name: storageAccountName
  location: location
  kind: 'StorageV2'
  sku: {
    name: 'Standard_LRS'
  }
  properties: {
    allowSharedKeyAccess: false
    allowBlobPublicAccess: false
    minimumTlsVersion: 'TLS1_2'
    supportsHttpsTrafficOnly: true
    defaultToOAuthAuthentication: true
  }

  resource blobService 'blobServices' = {
    name: 'default'

    // Flex Consumption reads the app package from this container (it must exist).
    resource deployment 'containers' = {
      name: deploymentContainerName
      properties: {
        publicAccess: 'None'
      }
    }
  }

  resource tableService 'tableServices' = {
    name: 'default'
  }
}

resource tables 'Microsoft.Storage/storageAccounts/tableServices/tables@2023-05-01' = [for t in registryTables: {
  parent: account::tableService
  name: t
}]

output name string = account.name
output blobEndpoint string = account.properties.primaryEndpoints.blob
