// The Flex Consumption (FC1) plan and the Linux function app running the custom handler.
// Shape: Azure-Samples/azure-functions-flex-consumption-samples IaC/bicep/core/host/function.bicep;
// runtime { name: 'custom', version: '1.0' }: MicrosoftDocs/azure-docs
// articles/azure-functions/migration/migrate-plan-consumption-to-flex.md. On Flex the app settings
// carry neither FUNCTIONS_WORKER_RUNTIME nor WEBSITE_RUN_FROM_PACKAGE, WEBSITE_CONTENT* or
// FUNCTIONS_EXTENSION_VERSION (articles/azure-functions/functions-app-settings.md).
//
// Every setting handler/src/config.rs reads (SETTINGS, HOST_SETTINGS) is set here, except
// FUNCTIONS_CUSTOMHANDLER_PORT (the host sets it) and EXTRA_TRUSTED_CA_FILE (development only);
// infra/tests checks that. Secrets are Key Vault references only.

param location string
param planName string
param functionAppName string
param storageAccountName string
param deploymentContainerName string
param appInsightsName string
param maximumInstanceCount int
param instanceMemoryMB int
param eventHubsNamespaceFqdn string
param eventHubName string
param dpsIdScope string
param dpsDeviceEndpoint string
param hubNames array
param hubHostNames array
@description('Versionless Key Vault secret URIs (keyvault.bicep output secretUris).')
param secretUris object

resource account 'Microsoft.Storage/storageAccounts@2023-05-01' existing = {
  name: storageAccountName
}

resource appInsights 'Microsoft.Insights/components@2020-02-02' existing = {
  name: appInsightsName
}

resource plan 'Microsoft.Web/serverfarms@2024-04-01' = {
  name: planName
  location: location
  kind: 'functionapp'
  sku: {
    tier: 'FlexConsumption'
    name: 'FC1'
  }
  properties: {
    reserved: true
  }
}

resource site 'Microsoft.Web/sites@2024-04-01' = {
  name: functionAppName
  location: location
  kind: 'functionapp,linux'
  identity: {
    type: 'SystemAssigned'
  }
  properties: {
    serverFarmId: plan.id
    httpsOnly: true
    siteConfig: {
      minTlsVersion: '1.2'
      appSettings: [
        // Host storage and the registry tables, by identity (no connection string).
        {
          name: 'AzureWebJobsStorage__accountName'
          value: account.name
        }
        {
          name: 'APPLICATIONINSIGHTS_CONNECTION_STRING'
          value: appInsights.properties.ConnectionString
        }
        {
          name: 'APPLICATIONINSIGHTS_AUTHENTICATION_STRING'
          value: 'Authorization=AAD'
        }
        {
          name: 'DPS_SERVICE_CONNECTION_STRING'
          value: '@Microsoft.KeyVault(SecretUri=${secretUris.dpsConnectionString})'
        }
        {
          name: 'DPS_ID_SCOPE'
          value: dpsIdScope
        }
        {
          name: 'DPS_DEVICE_ENDPOINT'
          value: dpsDeviceEndpoint
        }
        {
          name: 'IOTHUB_CONNECTION_STRINGS'
          value: '@Microsoft.KeyVault(SecretUri=${secretUris.hubConnectionStrings})'
        }
        // Hub names as events carry them (the resource name), with their host names.
        {
          name: 'IOTHUB_NAMES'
          value: join(map(range(0, length(hubNames)), i => '${hubNames[i]}=${hubHostNames[i]}'), '|')
        }
        {
          name: 'REGISTRY_TABLE_PREFIX'
          value: 'Registry'
        }
        {
          name: 'NOTIFY_WEBHOOK_URL'
          value: '@Microsoft.KeyVault(SecretUri=${secretUris.notifyWebhookUrl})'
        }
        {
          name: 'NOTIFY_WEBHOOK_SECRET'
          value: '@Microsoft.KeyVault(SecretUri=${secretUris.notifyWebhookSecret})'
        }
        {
          name: 'NOTIFY_RETRY_INTERVALS'
          value: '1,300'
        }
        // OnHubEvents' connection, identity-based: with the system-assigned identity only the
        // namespace is needed (MicrosoftDocs/azure-docs articles/azure-functions/
        // functions-bindings-event-hubs-trigger.md; __credential/__clientId are for user-assigned).
        {
          name: 'REGISTRY_EVENTS__fullyQualifiedNamespace'
          value: eventHubsNamespaceFqdn
        }
        {
          name: 'REGISTRY_EVENT_HUB_NAME'
          value: eventHubName
        }
      ]
    }
    functionAppConfig: {
      deployment: {
        storage: {
          type: 'blobContainer'
          value: '${account.properties.primaryEndpoints.blob}${deploymentContainerName}'
          authentication: {
            type: 'SystemAssignedIdentity'
          }
        }
      }
      scaleAndConcurrency: {
        maximumInstanceCount: maximumInstanceCount
        instanceMemoryMB: instanceMemoryMB
      }
      runtime: {
        name: 'custom'
        version: '1.0'
      }
    }
  }
}

output name string = site.name
output defaultHostName string = site.properties.defaultHostName
output principalId string = site.identity.principalId
