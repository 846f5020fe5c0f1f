// The Device Provisioning Service (S1), linked to every hub. DPS links hubs through shared access
// connection strings only (MicrosoftDocs/azure-docs articles/iot-hub/authenticate-authorize-azure-ad.md);
// the link uses each hub's iothubowner policy, as Azure/azure-quickstart-templates
// quickstarts/microsoft.devices/iothub-device-provisioning does. The keys are read here with
// listKeys and go nowhere else. Shape: Microsoft.Devices/provisioningServices 2022-12-12.

param location string
param dpsName string
@allowed([ 'Hashed', 'GeoLatency', 'Static' ])
param allocationPolicy string
param hubNames array
param hubHostNames array

var linkPolicy = 'iothubowner'

resource dps 'Microsoft.Devices/provisioningServices@2022-12-12' = {
  name: dpsName
  location: location
  sku: {
    name: 'S1'
    capacity: 1
  }
  properties: {
    allocationPolicy: allocationPolicy
    iotHubs: [for (name, i) in hubNames: {
      connectionString: 'HostName=${hubHostNames[i]};SharedAccessKeyName=${linkPolicy};SharedAccessKey=${listKeys(resourceId('Microsoft.Devices/IotHubs/IotHubKeys', name, linkPolicy), '2023-06-30').primaryKey}'
      location: location
    }]
  }
}

output name string = dps.name
output idScope string = dps.properties.idScope
// global.azure-devices-provisioning.net in the public cloud.
output globalEndpoint string = dps.properties.deviceProvisioningHostName
