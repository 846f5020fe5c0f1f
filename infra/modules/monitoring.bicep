// Log Analytics workspace and workspace-based Application Insights for the function app.
// Shape: Azure-Samples/azure-functions-flex-consumption-samples IaC/bicep (core/monitor).

param location string
param logAnalyticsName string
param appInsightsName string

resource workspace 'Microsoft.OperationalInsights/workspaces@2023-09-01' = {
  name: logAnalyticsName
  location: location
  properties: {
    sku: {
      name: 'PerGB2018'
    }
    retentionInDays: 30
  }
}

resource appInsights 'Microsoft.Insights/components@2020-02-02' = {
  name: appInsightsName
  location: location
  kind: 'web'
  properties: {
    Application_Type: 'web'
    WorkspaceResourceId: workspace.id
    // Telemetry is sent with the app's Entra identity (Monitoring Metrics Publisher, roles.bicep).
    DisableLocalAuth: true
  }
}

output appInsightsName string = appInsights.name
