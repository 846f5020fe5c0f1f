// azure-iot-provisioning-device with its HTTP and MQTT transports against the emulator:
// individual and group registrations, wrong keys, disabled enrollments, custom allocation with
// payloads.
import test from 'node:test';
import assert from 'node:assert/strict';
import { endpoints, service, uniqueId, newKey, deriveKey, registerDevice, startWebhook, Http, Mqtt } from './environment.mjs';

const hubs = endpoints.hubs.map((h) => h.hostName);

for (const [name, Transport] of [['HTTPS', Http], ['MQTT', Mqtt]]) {
  test(`${name}: an enrolled device registers and is assigned to a linked hub`, async () => {
    const client = service();
    const id = uniqueId(`dev-${name.toLowerCase()}`);
    await client.createOrUpdateIndividualEnrollment({ registrationId: id, attestation: { type: 'symmetricKey' } });
    const key = (await client.getIndividualEnrollmentAttestationMechanism(id)).responseBody.symmetricKey.primaryKey;
    const result = await registerDevice(Transport, id, key);
    assert.equal(result.status, 'assigned');
    assert.equal(result.deviceId, id);
    assert.ok(hubs.includes(result.assignedHub), `${result.assignedHub} is not a linked hub`);
    const again = await registerDevice(Transport, id, key);
    assert.equal(again.assignedHub, result.assignedHub);
    assert.equal(again.substatus, 'reprovisionedToInitialAssignment');
  });

  test(`${name}: a wrong key is refused`, async () => {
    const client = service();
    const id = uniqueId(`dev-wrong-${name.toLowerCase()}`);
    await client.createOrUpdateIndividualEnrollment({ registrationId: id, attestation: { type: 'symmetricKey' } });
    await assert.rejects(registerDevice(Transport, id, newKey()));
    await assert.rejects(client.getDeviceRegistrationState(id), (err) => err.response.statusCode === 404);
  });

  test(`${name}: a disabled enrollment does not assign`, async () => {
    const client = service();
    const id = uniqueId(`dev-off-${name.toLowerCase()}`);
    await client.createOrUpdateIndividualEnrollment({
      registrationId: id, attestation: { type: 'symmetricKey' }, provisioningStatus: 'disabled',
    });
    const key = (await client.getIndividualEnrollmentAttestationMechanism(id)).responseBody.symmetricKey.primaryKey;
    await assert.rejects(registerDevice(Transport, id, key));
    const state = (await client.getDeviceRegistrationState(id)).responseBody;
    assert.equal(state.status, 'disabled');
    assert.equal(state.assignedHub, undefined);
  });

  test(`${name}: a group member registers with its derived key`, async () => {
    const client = service();
    const groupId = uniqueId(`dev-group-${name.toLowerCase()}`);
    const groupKey = newKey();
    await client.createOrUpdateEnrollmentGroup({
      enrollmentGroupId: groupId,
      attestation: { type: 'symmetricKey', symmetricKey: { primaryKey: groupKey, secondaryKey: newKey() } },
    });
    const id = uniqueId(`member-${name.toLowerCase()}`);
    const result = await registerDevice(Transport, id, deriveKey(groupKey, id));
    assert.equal(result.status, 'assigned');
    await client.deleteEnrollmentGroup(groupId);
  });

  test(`${name}: custom allocation receives the device payload and returns one`, async () => {
    const webhook = await startWebhook((request) => ({
      iotHubHostName: request.linkedHubs[request.linkedHubs.length - 1],
      payload: { greeting: `hello ${request.deviceRuntimeContext.registrationId}` },
    }));
    try {
      const client = service();
      const id = uniqueId(`dev-custom-${name.toLowerCase()}`);
      await client.createOrUpdateIndividualEnrollment({
        registrationId: id,
        attestation: { type: 'symmetricKey' },
        allocationPolicy: 'custom',
        customAllocationDefinition: { webhookUrl: webhook.url, apiVersion: '2021-10-01' },
      });
      const key = (await client.getIndividualEnrollmentAttestationMechanism(id)).responseBody.symmetricKey.primaryKey;
      const result = await registerDevice(Transport, id, key, { model: 'TX-9' });
      assert.equal(result.assignedHub, hubs[hubs.length - 1]);
      assert.deepEqual(result.payload, { greeting: `hello ${id}` });
      assert.deepEqual(webhook.requests[0].deviceRuntimeContext.payload, { model: 'TX-9' });
    } finally {
      await webhook.close();
    }
  });
}
