"""The reader key of a running Functions host (the stand-in of `make up`, or any host with the
admin API): one function key, named as functions/readers.json says, with one value on every
read-only function that file lists. An existing reader key on any of them is kept, so a second
`make up` does not change the key readers hold; otherwise a new one is made.

The host's admin API (Azure/azure-functions-host KeysController): GET and PUT
/admin/functions/{name}/keys/{keyName}, with the master key in x-functions-key; PUT takes
{"name", "value"} and answers 201 (created) or 200 (replaced).

Used by scripts/up.sh (imported); tested by scripts/tests/test_reader_key.py.
"""

import json
import secrets
import urllib.error
import urllib.request


class ReaderKeyError(Exception):
    """The host refused or could not be reached; the message names the function, never a key."""


def _call(root, master_key, method, path, body=None):
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(
        root.rstrip("/") + path,
        data=data,
        method=method,
        headers={"x-functions-key": master_key, "content-type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read() or b"null")
    except urllib.error.HTTPError as error:
        return error.code, None
    except (urllib.error.URLError, OSError) as error:
        raise ReaderKeyError(f"the Functions host at {root} cannot be reached: {error}") from None


def ensure(root, master_key, readers_path):
    """Makes sure every read-only function has the reader key, all with one value; returns it."""
    with open(readers_path) as file:
        readers = json.load(file)
    name = readers["keyName"]
    functions = readers["functions"]
    if not functions:
        raise ReaderKeyError(f"{readers_path} lists no function")
    value = None
    for function in functions:
        status, key = _call(root, master_key, "GET", f"/admin/functions/{function}/keys/{name}")
        if status == 200 and isinstance(key, dict) and key.get("value"):
            value = key["value"]
            break
        if status not in (200, 404):
            raise ReaderKeyError(f"reading the {name} key of {function} failed: HTTP {status}")
    value = value or secrets.token_urlsafe(32)
    for function in functions:
        status, _ = _call(
            root, master_key, "PUT", f"/admin/functions/{function}/keys/{name}",
            {"name": name, "value": value},
        )
        if status not in (200, 201):
            raise ReaderKeyError(f"setting the {name} key of {function} failed: HTTP {status}")
    return value
