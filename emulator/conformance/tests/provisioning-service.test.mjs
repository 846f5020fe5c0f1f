// azure-iot-provisioning-service against the emulator: enrollment and group CRUD, etags,
// attestation (keys), query with paging, bulk operations, registration records.
import test from 'node:test';
import assert from 'node:assert/strict';
import { service, uniqueId, newKey, deriveKey, registerDevice, runBulk, Http } from './environment.mjs';

test('individual enrollments: create with generated keys, read without keys, update with etag, delete', async () => {
  const client = service();
  const id = uniqueId('svc-individual');
  const created = (await client.createOrUpdateIndividualEnrollment({
    registrationId: id,
    attestation: { type: 'symmetricKey' },
    initialTwin: { tags: { customer: 'contoso' }, properties: { desired: { interval: 30 } } },
    provisioningStatus: 'enabled',
  })).responseBody;
  assert.equal(created.registrationId, id);
  assert.ok(created.etag);

  const read = (await client.getIndividualEnrollment(id)).responseBody;
  assert.equal(read.initialTwin.tags.customer, 'contoso');
  assert.ok(!read.attestation.symmetricKey?.primaryKey, 'GET must not return keys');

  const keys = (await client.getIndividualEnrollmentAttestationMechanism(id)).responseBody;
  assert.equal(Buffer.from(keys.symmetricKey.primaryKey, 'base64').length, 64);

  // The SDK sends the record's etag as If-Match; a stale one must be refused.
  const updated = (await client.createOrUpdateIndividualEnrollment({ ...read, deviceId: 'renamed' })).responseBody;
  assert.equal(updated.deviceId, 'renamed');
  assert.notEqual(updated.etag, read.etag);
  await assert.rejects(client.createOrUpdateIndividualEnrollment({ ...read, deviceId: 'stale' }), (err) => {
    assert.equal(err.response.statusCode, 412);
    return true;
  });
  const keysAfter = (await client.getIndividualEnrollmentAttestationMechanism(id)).responseBody;
  assert.equal(keysAfter.symmetricKey.primaryKey, keys.symmetricKey.primaryKey, 'updates keep the keys');

  await assert.rejects(client.deleteIndividualEnrollment(id, read.etag), (err) => err.response.statusCode === 412);
  await client.deleteIndividualEnrollment(id, updated.etag);
  await assert.rejects(client.getIndividualEnrollment(id), (err) => err.response.statusCode === 404);
});

test('bulk operations answer per item and cap at ten', async () => {
  const client = service();
  const ids = Array.from({ length: 10 }, (_, i) => uniqueId(`svc-bulk-${i}`));
  const enrollments = ids.map((registrationId) => ({ registrationId, attestation: { type: 'symmetricKey' } }));
  const result = (await runBulk(client, { mode: 'create', enrollments })).result;
  assert.equal(result.isSuccessful, true);

  const again = (await runBulk(client, { mode: 'create', enrollments: enrollments.slice(0, 2) })).result;
  assert.equal(again.isSuccessful, false);
  assert.deepEqual(again.errors.map((e) => e.registrationId).sort(), ids.slice(0, 2).sort());
  assert.ok(again.errors.every((e) => e.errorCode === 409201));

  const eleven = [...enrollments, { registrationId: uniqueId('svc-bulk-x'), attestation: { type: 'symmetricKey' } }];
  await assert.rejects(runBulk(client, { mode: 'create', enrollments: eleven }),
    (err) => err.response.statusCode === 400);

  const deleted = (await runBulk(client, { mode: 'delete', enrollments })).result;
  assert.equal(deleted.isSuccessful, true);
});

test('queries page through enrollments with continuation tokens', async () => {
  const client = service();
  const ids = Array.from({ length: 10 }, (_, i) => uniqueId(`svc-query-${i}`));
  await runBulk(client, {
    mode: 'create',
    enrollments: ids.map((registrationId) => ({ registrationId, attestation: { type: 'symmetricKey' } })),
  });
  const query = client.createIndividualEnrollmentQuery({ query: '*' }, 3);
  const seen = [];
  let pages = 0;
  while (query.hasMoreResults && pages < 100) {
    // In promise form, next() without an argument forgets the stored token (SDK 1.11.2), so an
    // application passes it explicitly.
    const page = await query.next(query.continuationToken);
    pages += 1;
    assert.ok(page.responseBody.length <= 3);
    seen.push(...page.responseBody.map((e) => e.registrationId));
  }
  for (const id of ids) assert.ok(seen.includes(id), `${id} missing from the query`);
  assert.ok(pages >= 4);
  await runBulk(client, {
    mode: 'delete',
    enrollments: ids.map((registrationId) => ({ registrationId, attestation: { type: 'symmetricKey' } })),
  });
});

test('enrollment groups and their registration records', async () => {
  const client = service();
  const groupId = uniqueId('svc-group');
  const groupKey = newKey();
  const group = (await client.createOrUpdateEnrollmentGroup({
    enrollmentGroupId: groupId,
    attestation: { type: 'symmetricKey', symmetricKey: { primaryKey: groupKey } },
  })).responseBody;
  assert.equal(group.enrollmentGroupId, groupId);
  const keys = (await client.getEnrollmentGroupAttestationMechanism(groupId)).responseBody;
  assert.equal(keys.symmetricKey.primaryKey, groupKey);

  const groups = await client.createEnrollmentGroupQuery({ query: '*' }).next();
  assert.ok(groups.responseBody.some((g) => g.enrollmentGroupId === groupId));

  const deviceIds = [uniqueId('svc-member-a'), uniqueId('svc-member-b')];
  for (const id of deviceIds) await registerDevice(Http, id, deriveKey(groupKey, id));

  const states = await client.createEnrollmentGroupDeviceRegistrationStateQuery({ query: '*' }, groupId).next();
  assert.deepEqual(states.responseBody.map((s) => s.registrationId).sort(), deviceIds.sort());
  const state = (await client.getDeviceRegistrationState(deviceIds[0])).responseBody;
  assert.equal(state.status, 'assigned');
  await client.deleteDeviceRegistrationState(deviceIds[0], state.etag);
  await assert.rejects(client.getDeviceRegistrationState(deviceIds[0]), (err) => err.response.statusCode === 404);

  await client.deleteEnrollmentGroup(groupId);
  await assert.rejects(client.getEnrollmentGroup(groupId), (err) => err.response.statusCode === 404);
});

test('a client holding a wrong policy key is refused', async () => {
  const { endpoints, ProvisioningServiceClient } = await import('./environment.mjs');
  const forged = endpoints.dps.serviceConnectionString.replace(/SharedAccessKey=[^;]+/, `SharedAccessKey=${newKey()}`);
  const client = ProvisioningServiceClient.fromConnectionString(forged);
  await assert.rejects(client.getIndividualEnrollment('anything'), (err) => err.response.statusCode === 401);
});
