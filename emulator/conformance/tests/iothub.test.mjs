// azure-iothub (service) and azure-iot-device with azure-iot-device-mqtt (device) against the
// emulator's hubs: registry, twins, desired updates, direct methods, telemetry and
// cloud-to-device messages; module identities (Registry modules, ModuleClient).
import test from 'node:test';
import assert from 'node:assert/strict';
import https from 'node:https';
import { createRequire } from 'node:module';
import { endpoints, uniqueId } from './environment.mjs';

const require = createRequire(import.meta.url);
const { Client: DeviceClient, ModuleClient, Message } = require('azure-iot-device');
const { Mqtt } = require('azure-iot-device-mqtt');
const iothub = require('azure-iothub');
const { SharedAccessSignature, anHourFromNow } = require('azure-iot-common');

const hub = endpoints.hubs[0];
const registry = () => iothub.Registry.fromConnectionString(hub.connectionString);

async function connectedDevice(id) {
  const created = (await registry().create({ deviceId: id })).responseBody;
  const key = created.authentication.symmetricKey.primaryKey;
  const client = DeviceClient.fromConnectionString(`HostName=${hub.hostName};DeviceId=${id};SharedAccessKey=${key}`, Mqtt);
  await client.open();
  return client;
}

// The emulator-only route for cloud-to-device messages (Azure takes these over AMQP).
function sendCloudMessage(deviceId, body, headers) {
  const policy = Object.fromEntries(hub.connectionString.split(';').map((p) => [p.slice(0, p.indexOf('=')), p.slice(p.indexOf('=') + 1)]));
  const sas = SharedAccessSignature.create(policy.HostName, policy.SharedAccessKeyName, policy.SharedAccessKey, anHourFromNow()).toString();
  return new Promise((resolve, reject) => {
    const request = https.request({
      host: hub.hostName, method: 'POST', path: `/devices/${deviceId}/messages/devicebound?api-version=2021-04-12`,
      headers: { Authorization: sas, 'Content-Type': 'application/json', ...headers },
    }, (response) => { response.resume(); response.on('end', () => resolve(response.statusCode)); });
    request.on('error', reject);
    request.end(body);
  });
}

test('registry: create with generated keys, read, disable with etag, list, delete', async () => {
  const id = uniqueId('reg');
  const created = (await registry().create({ deviceId: id })).responseBody;
  assert.equal(created.deviceId, id);
  assert.equal(created.status, 'enabled');
  assert.ok(created.authentication.symmetricKey.primaryKey);
  const read = (await registry().get(id)).responseBody;
  assert.equal(read.connectionState, 'Disconnected');
  const disabled = (await registry().update({ deviceId: id, status: 'disabled', etag: read.etag })).responseBody;
  assert.equal(disabled.status, 'disabled');
  const listed = (await registry().list()).responseBody;
  assert.ok(listed.some((d) => d.deviceId === id));
  await assert.rejects(registry().create({ deviceId: id }));
  await registry().delete(id);
  await assert.rejects(registry().get(id));
});

test('device: connects, sends telemetry with properties, and the hub records its activity', async () => {
  const id = uniqueId('telemetry');
  const client = await connectedDevice(id);
  try {
    const message = new Message(JSON.stringify({ temperature: 21.5 }));
    message.contentType = 'application/json';
    message.contentEncoding = 'utf-8';
    message.messageId = 'm-1';
    message.properties.add('alert', 'none');
    await client.sendEvent(message);
    const state = (await registry().get(id)).responseBody;
    assert.equal(state.connectionState, 'Connected');
    assert.notEqual(state.lastActivityTime, '0001-01-01T00:00:00Z');
  } finally {
    await client.close();
  }
});

test('twin: reported properties, desired updates with etags, pushed to the device', async () => {
  const id = uniqueId('twin');
  const client = await connectedDevice(id);
  try {
    const twin = await client.getTwin();
    await new Promise((resolve, reject) => twin.properties.reported.update({ firmware: '1.2.3', status: { provisioned: true } }, (e) => (e ? reject(e) : resolve())));
    const desired = new Promise((resolve) => twin.on('properties.desired', (patch) => { if (patch.telemetryInterval) resolve(patch); }));
    const serviceTwin = (await registry().getTwin(id)).responseBody;
    const etagBeforeUpdate = serviceTwin.etag;
    assert.equal(serviceTwin.properties.reported.firmware, '1.2.3');
    await serviceTwin.update({ tags: { customer: 'contoso' }, properties: { desired: { telemetryInterval: 15 } } });
    const patch = await desired;
    assert.equal(patch.telemetryInterval, 15);
    const reread = (await registry().getTwin(id)).responseBody;
    assert.equal(reread.tags.customer, 'contoso');
    assert.equal(reread.properties.desired.telemetryInterval, 15);
    // The Twin object keeps its etag current; a caller holding the old one is refused.
    await assert.rejects(registry().updateTwin(id, { tags: { customer: 'stale' } }, etagBeforeUpdate),
      (err) => err.response.statusCode === 412);
  } finally {
    await client.close();
  }
});

test('direct methods: the device answers; an offline device is reported', async () => {
  const id = uniqueId('method');
  const client = await connectedDevice(id);
  const service = iothub.Client.fromConnectionString(hub.connectionString);
  try {
    client.onDeviceMethod('Reprovision', (request, response) => {
      response.send(200, { received: request.payload }, () => {});
    });
    // The SDK subscribes to methods on the first onDeviceMethod; invoke allows it time to connect.
    const result = await service.invokeDeviceMethod(id, { methodName: 'Reprovision', payload: { reason: 'test' }, responseTimeoutInSeconds: 10, connectTimeoutInSeconds: 5 });
    assert.equal(result.result.status, 200);
    assert.deepEqual(result.result.payload, { received: { reason: 'test' } });
  } finally {
    await client.close();
  }
  await assert.rejects(service.invokeDeviceMethod(id, { methodName: 'Reprovision', responseTimeoutInSeconds: 5 }));
});

test('cloud-to-device: a message arrives with its properties and is completed', async () => {
  const id = uniqueId('c2d');
  const client = await connectedDevice(id);
  try {
    const received = new Promise((resolve) => client.on('message', (message) => {
      client.complete(message, () => resolve(message));
    }));
    assert.equal(await sendCloudMessage(id, JSON.stringify({ command: 'blink' }), { 'iothub-messageid': 'c2d-1', 'iothub-app-priority': 'high' }), 204);
    const message = await received;
    assert.equal(message.messageId, 'c2d-1');
    assert.equal(message.data.toString(), '{"command":"blink"}');
    assert.equal(message.properties.getValue('priority'), 'high');
    for (let i = 0; i < 50; i += 1) {
      if ((await registry().get(id)).responseBody.cloudToDeviceMessageCount === 0) break;
      await new Promise((r) => setTimeout(r, 20));
    }
    assert.equal((await registry().get(id)).responseBody.cloudToDeviceMessageCount, 0);
  } finally {
    await client.close();
  }
});

test('modules: addModule, a ModuleClient reports, sends and answers a method, removeModule; the device is untouched', async () => {
  const deviceId = uniqueId('edge');
  const moduleId = 'sensor';
  await registry().create({ deviceId });
  const created = (await registry().addModule({ deviceId, moduleId })).responseBody;
  assert.equal(created.moduleId, moduleId);
  assert.equal(created.deviceId, deviceId);
  const key = created.authentication.symmetricKey.primaryKey;
  assert.ok(key);
  const client = ModuleClient.fromConnectionString(
    `HostName=${hub.hostName};DeviceId=${deviceId};ModuleId=${moduleId};SharedAccessKey=${key}`, Mqtt);
  await client.open();
  const service = iothub.Client.fromConnectionString(hub.connectionString);
  try {
    const twin = await client.getTwin();
    await new Promise((resolve, reject) => twin.properties.reported.update({ firmware: '2.0' }, (e) => (e ? reject(e) : resolve())));
    const desired = new Promise((resolve) => twin.on('properties.desired', (patch) => { if (patch.rate) resolve(patch); }));
    const moduleTwin = (await registry().getModuleTwin(deviceId, moduleId)).responseBody;
    assert.equal(moduleTwin.moduleId, moduleId);
    assert.equal(moduleTwin.properties.reported.firmware, '2.0');
    await moduleTwin.update({ properties: { desired: { rate: 5 } } });
    assert.equal((await desired).rate, 5);

    await client.sendOutputEvent('readings', new Message(JSON.stringify({ temperature: 20 })));
    client.onMethod('Calibrate', (request, response) => response.send(200, { offset: request.payload.offset }, () => {}));
    const result = await service.invokeDeviceMethod(deviceId, moduleId,
      { methodName: 'Calibrate', payload: { offset: 2 }, responseTimeoutInSeconds: 10, connectTimeoutInSeconds: 5 });
    assert.equal(result.result.status, 200);
    assert.deepEqual(result.result.payload, { offset: 2 });

    const modules = (await registry().getModulesOnDevice(deviceId)).responseBody;
    assert.deepEqual(modules.map((m) => m.moduleId), [moduleId]);
    assert.equal((await registry().getModule(deviceId, moduleId)).responseBody.connectionState, 'Connected');
    const device = (await registry().get(deviceId)).responseBody;
    assert.equal(device.connectionState, 'Disconnected', 'the module connection is not the device\'s');
    const deviceTwin = (await registry().getTwin(deviceId)).responseBody;
    assert.equal(deviceTwin.properties.reported.firmware, undefined);
    assert.equal(deviceTwin.properties.desired.rate, undefined);
  } finally {
    await client.close();
  }
  await registry().removeModule(deviceId, moduleId);
  await assert.rejects(registry().getModule(deviceId, moduleId), (err) => err.response.statusCode === 404);
  assert.equal((await registry().get(deviceId)).responseBody.deviceId, deviceId);
  await registry().delete(deviceId);
});
