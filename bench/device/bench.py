"""The device benchmark's two clients, run by scripts/bench-device.sh.

python CODE CA_FILE      the official Python device SDK (azure-iot-device): provision through
                         DPS, connect to the hub, send the first message; then send ten messages
                         a second for ten seconds. Prints the time to the first acknowledged
                         message and the process's resident memory, as JSON.
portal URL CODE LOG      what a person does in the Rust device's portal: open it, paste the code,
                         submit; then waits until the telemetry sender's LOG says the hub
                         acknowledged its first message. Prints the time from submit, as JSON.
"""

import base64
import json
import re
import sys
import time


def rss_kib():
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def parse(code):
    parts = code.strip().split("~")
    scope, registration, key, endpoint = parts[1], parts[2], parts[3], parts[4]
    key = base64.b64encode(base64.urlsafe_b64decode(key + "=" * (-len(key) % 4))).decode()
    return scope, registration, key, endpoint.split(":")[0]


def python_sdk(code, ca_file):
    from azure.iot.device import IoTHubDeviceClient, Message, ProvisioningDeviceClient

    ca = open(ca_file).read()
    scope, registration, key, host = parse(code)
    started = time.monotonic()
    provisioning = ProvisioningDeviceClient.create_from_symmetric_key(
        provisioning_host=host, registration_id=registration, id_scope=scope, symmetric_key=key,
        server_verification_cert=ca)
    state = provisioning.register().registration_state
    client = IoTHubDeviceClient.create_from_symmetric_key(
        symmetric_key=key, hostname=state.assigned_hub, device_id=state.device_id, server_verification_cert=ca)
    client.connect()
    client.send_message(Message(json.dumps({"temperature": 21.5}), content_encoding="utf-8", content_type="application/json"))
    first = time.monotonic() - started
    for n in range(100):
        client.send_message(Message(json.dumps({"temperature": 21.5, "n": n}), content_encoding="utf-8", content_type="application/json"))
        time.sleep(0.1)
    print(json.dumps({"seconds": first, "rss_kib": rss_kib()}))
    client.shutdown()


def portal(url, code, log):
    import requests

    session = requests.Session()
    session.get(url)
    token = session.cookies.get("portal_csrf")
    started = time.monotonic()
    session.post(url.rstrip("/") + "/provision", data={"code": code, "csrf": token}, allow_redirects=False)
    deadline = started + 60
    while time.monotonic() < deadline:
        with open(log, errors="replace") as text:
            if re.search("acknowledged the first message", text.read()):
                print(json.dumps({"seconds": time.monotonic() - started}))
                return
        time.sleep(0.002)
    sys.exit("the sender did not report its first acknowledged message within 60 s")


if __name__ == "__main__":
    if sys.argv[1] == "python":
        python_sdk(sys.argv[2], sys.argv[3])
    elif sys.argv[1] == "portal":
        portal(sys.argv[2], sys.argv[3], sys.argv[4])
    else:
        sys.exit(__doc__)
