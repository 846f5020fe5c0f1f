// What every conformance test needs: the emulator's endpoints and the official SDK packages.
// The SDKs are used exactly as an application would use them; the only emulator-specific
// inputs are host names from endpoints.json and the CA (NODE_EXTRA_CA_CERTS).
import fs from 'node:fs';
import crypto from 'node:crypto';
import http from 'node:http';
import { createRequire } from 'node:module';

const require = createRequire(import.meta.url);
export const { ProvisioningServiceClient } = require('azure-iot-provisioning-service');
export const { ProvisioningDeviceClient } = require('azure-iot-provisioning-device');
export const { Http } = require('azure-iot-provisioning-device-http');
export const { Mqtt } = require('azure-iot-provisioning-device-mqtt');
export const { SymmetricKeySecurityClient } = require('azure-iot-security-symmetric-key');

const path = process.env.EMULATOR_ENDPOINTS;
if (!path) {
  throw new Error('EMULATOR_ENDPOINTS must name the emulator endpoints.json (run through run.sh)');
}
export const endpoints = JSON.parse(fs.readFileSync(path, 'utf8'));
if (!process.env.NODE_EXTRA_CA_CERTS) {
  throw new Error('NODE_EXTRA_CA_CERTS must name the emulator CA (run through run.sh)');
}

export const service = () => ProvisioningServiceClient.fromConnectionString(endpoints.dps.serviceConnectionString);

// Unique ids per run, so the suite can rerun against a long-lived emulator.
const run = crypto.randomBytes(3).toString('hex');
export const uniqueId = (name) => `${name}-${run}`;

// The documented derivation of a device key from a group key.
export const deriveKey = (groupKey, registrationId) =>
  crypto.createHmac('sha256', Buffer.from(groupKey, 'base64')).update(registrationId, 'utf8').digest('base64');

export const newKey = () => crypto.randomBytes(64).toString('base64');

export async function registerDevice(Transport, registrationId, key, payload) {
  const client = ProvisioningDeviceClient.create(
    endpoints.dps.deviceEndpoint,
    endpoints.dps.idScope,
    new Transport(),
    new SymmetricKeySecurityClient(registrationId, key),
  );
  if (payload !== undefined) client.setProvisioningPayload(payload);
  return client.register();
}

// A custom allocation webhook that records requests and answers with `reply(request)`.
export async function startWebhook(reply) {
  const requests = [];
  const server = http.createServer((req, res) => {
    let body = '';
    req.on('data', (chunk) => { body += chunk; });
    req.on('end', () => {
      const request = JSON.parse(body);
      requests.push(request);
      res.writeHead(200, { 'content-type': 'application/json' });
      res.end(JSON.stringify(reply(request)));
    });
  });
  await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve));
  const url = `http://127.0.0.1:${server.address().port}/api/allocate?code=function-key`;
  return { url, requests, close: () => new Promise((resolve) => server.close(resolve)) };
}

// azure-iot-provisioning-service 1.11.2 never settles the promise of runBulkEnrollmentOperation
// (it only answers when a callback was given), so call it the callback way.
export const runBulk = (client, operation) => new Promise((resolve, reject) => {
  client.runBulkEnrollmentOperation(operation, (err, result, response) => {
    if (err) reject(err); else resolve({ result, response });
  });
});
