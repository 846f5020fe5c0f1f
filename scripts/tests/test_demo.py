"""`make demo` as a newcomer runs it: without a terminal it tells the whole story and stops,
leaving nothing running; with KEEP=1 it stays up with URLs and dpsctl commands to try until
interrupted, then stops everything. It needs the workspace's binaries, which `make test` has built
by the time this runs (the demo builds what is missing itself)."""

import os
import re
import signal
import socket
import subprocess
import threading
import unittest
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DEMO = ROOT / "scripts" / "demo.sh"
# A first build of everything takes minutes; a warm run about half a minute.
LIMIT = 900
QR_LINE = re.compile(r"^ *[\u2580\u2584\u2588 ]{20,}$")


def demo_env(**extra):
    env = {k: v for k, v in os.environ.items() if k != "KEEP"}
    env.update(extra)
    return env


def portal_port(text):
    match = re.search(r"the setup portal runs at http://127\.0\.0\.1:(\d+)/", text)
    assert match, text
    return int(match.group(1))


def listening(port):
    with socket.socket() as probe:
        probe.settimeout(1)
        return probe.connect_ex(("127.0.0.1", port)) == 0


class DemoTest(unittest.TestCase):
    def test_without_a_terminal_the_demo_tells_the_whole_flow_and_stops(self):
        run = subprocess.run(
            [str(DEMO)], cwd=ROOT, env=demo_env(), stdin=subprocess.DEVNULL,
            capture_output=True, text=True, timeout=LIMIT,
        )
        out = run.stdout
        self.assertEqual(run.returncode, 0, out + run.stderr)
        lines = out.splitlines()
        # Step 3: the code, then its QR code drawn with half blocks, at least 21 modules high.
        code_at = next(i for i, line in enumerate(lines) if line.strip().startswith("DP1~"))
        qr = []
        for line in lines[code_at + 1:]:
            if not QR_LINE.match(line):
                break
            qr.append(line)
        self.assertGreaterEqual(len(qr), 11, "\n".join(lines[code_at:code_at + 40]))
        # Hub names where the record knows them.
        self.assertRegex(out, r"provisioned to IoT hub hub-\d \(127\.0\.0\.\d+\)")
        self.assertIn("Done: enrolled through the middleware", out)
        self.assertNotIn("Keep everything running", out, "no prompt without a terminal")
        self.assertNotIn("Everything keeps running", out)
        self.assertFalse(listening(portal_port(out)), "the portal was stopped")

    def test_keep_stays_up_with_things_to_try_until_interrupted(self):
        demo = subprocess.Popen(
            [str(DEMO)], cwd=ROOT, env=demo_env(KEEP="1"), stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
        )
        seen = []
        # Reading its output has no timeout of its own: a demo that hangs is killed.
        watchdog = threading.Timer(LIMIT, lambda: os.killpg(demo.pid, signal.SIGKILL))
        watchdog.start()
        try:
            # Read until the last suggestion; a demo that ends first fails the test.
            for line in demo.stdout:
                seen.append(line)
                if "dpsctl code my-device" in line:
                    break
            text = "".join(seen)
            self.assertIn("Everything keeps running until you press Ctrl-C", text)
            self.assertRegex(text, r"the fleet dashboard +http://127\.0\.0\.1:\d+/api/dashboard\?code=")
            self.assertIn("dpsctl list devices", text)
            port = portal_port(text)
            self.assertTrue(listening(port), "the portal stays up")
            self.assertIsNone(demo.poll(), "the demo waits")
            os.killpg(demo.pid, signal.SIGINT)
            rest, _ = demo.communicate(timeout=60)
            self.assertEqual(demo.returncode, 0, rest)
            self.assertIn("Stopping...", rest)
            self.assertFalse(listening(port), "Ctrl-C stopped the portal")
        finally:
            watchdog.cancel()
            if demo.poll() is None:
                os.killpg(demo.pid, signal.SIGKILL)
                demo.wait()


if __name__ == "__main__":
    unittest.main()
