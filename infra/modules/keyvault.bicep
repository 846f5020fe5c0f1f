// Key Vault (RBAC mode) holding everything that must stay a secret. The function app refers to
// these with @Microsoft.KeyVault(SecretUri=...) app settings and reads them as Key Vault Secrets
// User (roles.bicep). Key material is read with list* functions only here and in dps.bicep.

param location string
param keyVaultName string
param dpsName string
param logicAppName string

@description('The webhook signing secret.')
@secure()
param notifyWebhookSecret string

@description('{ values: [ one service connection string per hub ] }, joined with | into one secret.')
@secure()
param hubConnectionStrings object

resource vault 'Microsoft.KeyVault/vaults@2023-07-01' = {
  name: keyVaultName
  location: location
  properties: {
    tenantId: subscription().tenantId
    sku: {
      family: 'A'
      name: 'standard'
    }
    enableRbacAuthorization: true
    enableSoftDelete: true
    softDeleteRetentionInDays: 7
    publicNetworkAccess: 'Enabled'
  }
}

resource dps 'Microsoft.Devices/provisioningServices@2022-12-12' existing = {
  name: dpsName
}

// DPS service connection string: provisioningserviceowner policy of DPS.
resource dpsSecret 'Microsoft.KeyVault/vaults/secrets@2023-07-01' = {
  parent: vault
  name: 'dps-service-connection-string'
  properties: {
    value: 'HostName=${dps.properties.serviceOperationsHostName};SharedAccessKeyName=provisioningserviceowner;SharedAccessKey=${listKeys(resourceId('Microsoft.Devices/provisioningServices/keys', dpsName, 'provisioningserviceowner'), '2022-12-12').primaryKey}'
  }
}

resource hubsSecret 'Microsoft.KeyVault/vaults/secrets@2023-07-01' = {
  parent: vault
  name: 'iothub-connection-strings'
  properties: {
    value: join(hubConnectionStrings.values, '|')
  }
}

resource webhookSecret 'Microsoft.KeyVault/vaults/secrets@2023-07-01' = {
  parent: vault
  name: 'notify-webhook-secret'
  properties: {
    value: notifyWebhookSecret
  }
}

// The Logic App trigger's URL: it carries the trigger's SAS signature.
resource webhookUrl 'Microsoft.KeyVault/vaults/secrets@2023-07-01' = {
  parent: vault
  name: 'notify-webhook-url'
  properties: {
    value: listCallbackUrl(resourceId('Microsoft.Logic/workflows/triggers', logicAppName, 'manual'), '2019-05-01').value
  }
}

output name string = vault.name
// Versionless secret URIs (not secrets): app settings follow the latest version after a rotation.
output secretUris object = {
  dpsConnectionString: dpsSecret.properties.secretUri
  hubConnectionStrings: hubsSecret.properties.secretUri
  notifyWebhookSecret: webhookSecret.properties.secretUri
  notifyWebhookUrl: webhookUrl.properties.secretUri
}
