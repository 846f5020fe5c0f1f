"""Tests of scripts/reader_key.py (what `make up` runs to write readerKey), against a small
stand-in of the Functions host's admin keys API on loopback (standard library only)."""

import json
import sys
import tempfile
import threading
import unittest
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import reader_key  # noqa: E402

MASTER = "the-master-key"


class FakeHost(BaseHTTPRequestHandler):
    """GET/PUT /admin/functions/{name}/keys/{key} with the master key, as KeysController."""

    keys = {}
    functions = set()
    calls = []

    def log_message(self, *args):
        pass

    def _route(self):
        parts = self.path.strip("/").split("/")
        if len(parts) != 5 or parts[:2] != ["admin", "functions"] or parts[3] != "keys":
            return None
        return parts[2], parts[4]

    def _answer(self, status, body=None):
        data = b"" if body is None else json.dumps(body).encode()
        self.send_response(status)
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _handle(self, method):
        type(self).calls.append((method, self.path, self.headers.get("x-functions-key")))
        if self.headers.get("x-functions-key") != MASTER:
            return self._answer(401)
        route = self._route()
        if route is None or route[0] not in self.functions:
            return self._answer(404)
        function, name = route
        if method == "GET":
            value = self.keys.get(function, {}).get(name)
            return self._answer(404) if value is None else self._answer(200, {"name": name, "value": value})
        body = json.loads(self.rfile.read(int(self.headers["content-length"])))
        existed = name in self.keys.setdefault(function, {})
        self.keys[function][name] = body["value"]
        return self._answer(200 if existed else 201, {"name": name, "value": body["value"]})

    def do_GET(self):
        self._handle("GET")

    def do_PUT(self):
        self._handle("PUT")


class ReaderKeyTest(unittest.TestCase):
    def setUp(self):
        FakeHost.keys = {}
        FakeHost.functions = {"Devices", "Enrollments", "ProvisioningCode"}
        FakeHost.calls = []
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), FakeHost)
        self.serving = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.root = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.dir = tempfile.TemporaryDirectory()
        self.readers = Path(self.dir.name) / "readers.json"
        self.readers.write_text(json.dumps({"keyName": "reader", "functions": ["Devices", "Enrollments"]}))

    def stop(self):
        if self.serving:
            self.serving = False
            self.server.shutdown()
            self.server.server_close()

    def tearDown(self):
        self.stop()
        self.dir.cleanup()

    def test_one_new_key_goes_on_every_listed_function_and_no_other(self):
        value = reader_key.ensure(self.root, MASTER, self.readers)
        self.assertGreaterEqual(len(value), 32)
        self.assertEqual(FakeHost.keys["Devices"]["reader"], value)
        self.assertEqual(FakeHost.keys["Enrollments"]["reader"], value)
        self.assertNotIn("ProvisioningCode", FakeHost.keys)
        self.assertTrue(all(key == MASTER for _, _, key in FakeHost.calls), "every call carries the master key")

    def test_a_second_run_keeps_the_key_readers_hold(self):
        first = reader_key.ensure(self.root, MASTER, self.readers)
        self.assertEqual(reader_key.ensure(self.root, MASTER, self.readers), first)

    def test_a_key_found_on_one_function_is_spread_to_the_others(self):
        FakeHost.keys = {"Enrollments": {"reader": "kept-from-before"}}
        self.assertEqual(reader_key.ensure(self.root, MASTER, self.readers), "kept-from-before")
        self.assertEqual(FakeHost.keys["Devices"]["reader"], "kept-from-before")

    def test_a_refusal_names_the_function_and_no_key(self):
        with self.assertRaises(reader_key.ReaderKeyError) as raised:
            reader_key.ensure(self.root, "a-wrong-master-key", self.readers)
        message = str(raised.exception)
        self.assertIn("Devices", message)
        self.assertIn("401", message)
        self.assertNotIn("a-wrong-master-key", message)

    def test_a_listed_function_the_host_lacks_stops_it(self):
        self.readers.write_text(json.dumps({"keyName": "reader", "functions": ["Devices", "Gone"]}))
        with self.assertRaises(reader_key.ReaderKeyError) as raised:
            reader_key.ensure(self.root, MASTER, self.readers)
        self.assertIn("Gone", str(raised.exception))

    def test_an_unreachable_host_is_said_plainly(self):
        self.stop()
        with self.assertRaises(reader_key.ReaderKeyError) as raised:
            reader_key.ensure(self.root, MASTER, self.readers)
        self.assertIn("cannot be reached", str(raised.exception))


if __name__ == "__main__":
    unittest.main()
