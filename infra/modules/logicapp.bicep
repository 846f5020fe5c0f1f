// The Logic App receiving status notifications: an HTTP request trigger named 'manual' and a 202
// response, ready for a user to add their own actions. Its callback URL carries a signature, so it
// is read only into Key Vault (keyvault.bicep), never output.
// Shape: Microsoft.Logic/workflows 2019-05-01.

param location string
param logicAppName string

resource workflow 'Microsoft.Logic/workflows@2019-05-01' = {
  name: logicAppName
  location: location
  properties: {
    state: 'Enabled'
    definition: {
      '$schema': 'https://schema.management.azure.com/providers/Microsoft.Logic/schemas/2016-06-01/workflowdefinition.json#'
      contentVersion: '1.0.0.0'
      parameters: {}
      triggers: {
        manual: {
          type: 'Request'
          kind: 'Http'
          inputs: {
            method: 'POST'
            schema: {
              type: 'object'
            }
          }
        }
      }
      actions: {
        Accepted: {
          type: 'Response'
          kind: 'Http'
          runAfter: {}
          inputs: {
            statusCode: 202
          }
        }
      }
      outputs: {}
    }
  }
}

output name string = workflow.name
