"""Tests of scripts/deploy.sh (`make deploy`), with the standard library only.

Azure cannot be reached from the project's machines, so the script runs with a PATH that holds
only the few tools it needs plus stand-ins for `az` and `func` that log each call (and answer
like the real ones where the script reads the answer). With that PATH a real `az` or `func`
elsewhere on the machine can never be reached, whatever the script does.

- The dry run, from the repository itself: the commands in order, the template and parameter
  file, the publish from dist/function-app with --custom, no secret, nothing run.
- Bad input: refused with a message naming the setting, before anything runs.
- The real run, in a copy of the script in a scratch repository (a fake scripts/package.sh and
  infra/ files): what az and func receive, in order, the outputs read back, the webhook secret
  passed in a private file and never printed, kept across runs.
- The reader key: after the publish, one value set on every function of functions/readers.json,
  read by az from a private file (never on a command line, never printed), kept across runs,
  retried while the published functions are not listed yet.
- Prerequisites: each missing tool or sign-in stops the real run with a clear message.
"""

import json
import os
import shutil
import stat
import subprocess
import sys
import tempfile
import unittest
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "scripts" / "deploy.sh"
BASH = shutil.which("bash")

# What the script may use besides az and func (and python3, linked to this interpreter).
TOOLS = ["bash", "dirname", "mktemp", "rm", "cat", "mkdir", "env", "make", "seq", "sleep"]

# The read-only functions of the repository, and those of the scratch repository.
READERS = json.loads((REPO / "functions" / "readers.json").read_text())
SCRATCH_READERS = {"keyName": "reader", "functions": ["Enrollments", "Devices"]}

OUTPUTS = {
    "functionAppName": {"type": "String", "value": "iotdemo-func-x7k2"},
    "functionAppUrl": {"type": "String", "value": "https://iotdemo-func-x7k2.azurewebsites.net/api"},
    "dpsIdScope": {"type": "String", "value": "0ne00ABC123"},
    "dpsGlobalEndpoint": {"type": "String", "value": "global.azure-devices-provisioning.net"},
    "dpsName": {"type": "String", "value": "iotdemo-dps-x7k2"},
    "hubHostNames": {
        "type": "Array",
        "value": ["iotdemo-hub1-x7k2.azure-devices.net", "iotdemo-hub2-x7k2.azure-devices.net"],
    },
    "eventHubsNamespace": {"type": "String", "value": "iotdemo-ehns-x7k2.servicebus.windows.net"},
    "storageAccountName": {"type": "String", "value": "iotdemost7k2"},
    "keyVaultName": {"type": "String", "value": "iotdemo-kv-x7k2"},
    "logicAppName": {"type": "String", "value": "iotdemo-notify-x7k2"},
}

# The stand-ins log one JSON line per call to $STUB_LOG. STUB_* variables change their answers.
AZ_STUB = """\
import json, os, stat, sys
args = sys.argv[1:]
entry = {"tool": "az", "args": args, "cwd": os.getcwd()}
if args[:3] == ["deployment", "group", "create"]:
    # What the parameter files hold, and how readable they are.
    files = []
    for i, arg in enumerate(args):
        if arg == "--parameters" and args[i + 1].startswith("@"):
            path = args[i + 1][1:]
            content = json.load(open(path))
            files.append({"path": path, "mode": stat.S_IMODE(os.stat(path).st_mode),
                          "parameters": content.get("parameters", {})})
    entry["parameterFiles"] = files
with open(os.environ["STUB_LOG"], "a") as log:
    log.write(json.dumps(entry) + "\\n")
if args[:2] == ["bicep", "version"]:
    if os.environ.get("STUB_AZ_NO_BICEP"):
        sys.exit("Bicep CLI not found. Install it now by running 'az bicep install'.")
    print("Bicep CLI version 0.30.23 (ec3612dc2d)")
elif args[:2] == ["account", "show"]:
    if os.environ.get("STUB_AZ_SIGNED_OUT"):
        sys.exit("Please run 'az login' to setup account.")
elif args[:3] == ["deployment", "group", "create"]:
    print(json.dumps(json.loads(os.environ["STUB_OUTPUTS"]), indent=2))
elif args[:3] == ["functionapp", "function", "keys"]:
    # Function keys, kept in $STUB_KEYS: {function: {name: value}}. STUB_KEYS_NOT_READY=n: the
    # first n sets fail as for a function the host does not list yet.
    path = os.environ["STUB_KEYS"]
    keys = json.load(open(path)) if os.path.exists(path) else {}
    function = args[args.index("--function-name") + 1]
    if args[3] == "list":
        name = args[args.index("--query") + 1]
        value = keys.get(function, {}).get(name)
        if value:
            print(value)
    elif args[3] == "set":
        failures = os.environ.get("STUB_KEYS_NOT_READY_FILE")
        left = int(open(failures).read() or 0) if failures else 0
        if left > 0:
            open(failures, "w").write(str(left - 1))
            sys.exit(f"Function {function} not found")
        value = args[args.index("--key-value") + 1]
        if value.startswith("@"):
            # As az does: an argument value @file is the file's content.
            entry_file = value[1:]
            value = open(entry_file).read()
            with open(os.environ["STUB_LOG"] + ".keyfiles", "a") as seen:
                seen.write(json.dumps({"path": entry_file, "mode": stat.S_IMODE(os.stat(entry_file).st_mode)}) + "\\n")
        keys.setdefault(function, {})[args[args.index("--key-name") + 1]] = value
        json.dump(keys, open(path, "w"))
"""

FUNC_STUB = """\
import json, os, sys
args = sys.argv[1:]
entry = {"tool": "func", "args": args, "cwd": os.getcwd(),
         "files": sorted(os.listdir(".")) if args[:1] == ["azure"] else []}
with open(os.environ["STUB_LOG"], "a") as log:
    log.write(json.dumps(entry) + "\\n")
if args == ["--version"]:
    print(os.environ.get("STUB_FUNC_VERSION", "4.0.7030"))
"""

# The scratch repository's scripts/package.sh: the package's shape, without a build.
PACKAGE_STUB = """\
import json, os
with open(os.environ["STUB_LOG"], "a") as log:
    log.write(json.dumps({"tool": "package", "args": [], "cwd": os.getcwd()}) + "\\n")
os.makedirs("dist/function-app", exist_ok=True)
open("dist/function-app/host.json", "w").write("{}")
open("dist/function-app/handler", "w").write("")
"""

SECRET = "a-webhook-secret-that-must-never-be-printed"


def command_lines(stdout):
    """The `+ ` lines: the commands the script runs (or would run), in order."""
    return [line[2:] for line in stdout.splitlines() if line.startswith("+ ")]


class Sandbox:
    """A PATH with the allowed tools and the stand-ins, and a log of the stand-ins' calls."""

    def __init__(self, tmp, with_az=True, with_func=True):
        self.tmp = Path(tmp)
        self.bin = self.tmp / "bin"
        self.bin.mkdir()
        for tool in TOOLS:
            found = shutil.which(tool)
            if found:
                (self.bin / tool).symlink_to(found)
        (self.bin / "python3").symlink_to(sys.executable)
        if with_az:
            self.stub("az", AZ_STUB)
        if with_func:
            self.stub("func", FUNC_STUB)
        self.log = self.tmp / "calls.jsonl"
        self.log.touch()

    def stub(self, name, body, where=None):
        path = (where or self.bin) / name
        path.write_text(f"#!{sys.executable}\n{body}")
        path.chmod(0o755)
        return path

    def calls(self):
        return [json.loads(line) for line in self.log.read_text().splitlines()]

    def function_keys(self):
        path = self.tmp / "function-keys.json"
        return json.loads(path.read_text()) if path.exists() else {}

    def key_files(self):
        path = Path(str(self.log) + ".keyfiles")
        return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []

    def run(self, script, args=(), cwd=None, **env):
        environ = {
            "PATH": str(self.bin),
            "HOME": str(self.tmp),
            "STUB_LOG": str(self.log),
            "STUB_OUTPUTS": json.dumps(OUTPUTS),
            "STUB_KEYS": str(self.tmp / "function-keys.json"),
            "KEY_SET_WAIT_SECONDS": "0",
        }
        environ.update(env)
        return subprocess.run(
            [BASH, str(script), *args],
            cwd=cwd or self.tmp,
            env=environ,
            capture_output=True,
            text=True,
            timeout=60,
        )


def scratch_repository(root):
    """A repository with a copy of deploy.sh, a fake package.sh and placeholder infra files."""
    (root / "scripts").mkdir()
    shutil.copy2(SCRIPT, root / "scripts" / "deploy.sh")
    (root / "functions").mkdir()
    (root / "functions" / "readers.json").write_text(json.dumps(SCRATCH_READERS))
    (root / "infra").mkdir()
    (root / "infra" / "main.bicep").write_text("// placeholder\n")
    for env in ("dev", "prod"):
        (root / "infra" / f"main.{env}.parameters.json").write_text(
            json.dumps({"parameters": {"namePrefix": {"value": "iotdemo"}}})
        )
    return root / "scripts" / "deploy.sh"


class DryRun(unittest.TestCase):
    def setUp(self):
        self.tmp = tempfile.TemporaryDirectory()
        self.sandbox = Sandbox(self.tmp.name)
        self.rg = f"rg-deploy-test-{os.getpid()}"

    def tearDown(self):
        self.tmp.cleanup()

    def dry_run(self, **env):
        base = {"ENV": "dev", "RG": self.rg, "LOCATION": "westeurope", "NOTIFY_WEBHOOK_SECRET": SECRET}
        base.update(env)
        return self.sandbox.run(SCRIPT, ["--dry-run"], cwd=REPO, **base)

    def test_the_dry_run_prints_every_command_in_order_and_runs_none(self):
        result = self.dry_run(PREFIX="iotdemo")
        self.assertEqual(result.returncode, 0, result.stderr)
        commands = command_lines(result.stdout)
        self.assertEqual(len(commands), 5 + len(READERS["functions"]), result.stdout)
        self.assertEqual(commands[0], f"az group create --name {self.rg} --location westeurope --output none")
        self.assertTrue(commands[1].startswith(f"az deployment group create --resource-group {self.rg} "))
        self.assertEqual(commands[2], "scripts/package.sh")
        self.assertEqual(
            commands[3], "cd dist/function-app && func azure functionapp publish <functionAppName> --custom"
        )
        first = READERS["functions"][0]
        self.assertEqual(
            commands[4],
            f"az functionapp function keys list --resource-group {self.rg} --name <functionAppName> "
            f"--function-name {first} --query reader --output tsv",
        )
        for command, function in zip(commands[5:], READERS["functions"]):
            self.assertEqual(
                command,
                f"az functionapp function keys set --resource-group {self.rg} --name <functionAppName> "
                f"--function-name {function} --key-name reader --key-value @<reader-key-file> --output none",
            )
        self.assertEqual(self.sandbox.calls(), [], "the dry run called a tool")
        self.assertFalse((REPO / ".local" / "deploy" / f"{self.rg}.notify-webhook-secret").exists())

    def test_the_deployment_uses_the_template_the_environments_parameter_file_and_the_overrides(self):
        for env in ("dev", "prod"):
            with self.subTest(env=env):
                result = self.dry_run(ENV=env, PREFIX="iotdemo")
                self.assertEqual(result.returncode, 0, result.stderr)
                deployment = command_lines(result.stdout)[1].split()
                self.assertIn("--template-file infra/main.bicep", " ".join(deployment))
                self.assertIn(f"--parameters @infra/main.{env}.parameters.json", " ".join(deployment))
                self.assertIn("location=westeurope", deployment)
                self.assertIn("namePrefix=iotdemo", deployment)
                self.assertIn("--query properties.outputs", " ".join(deployment))
                # The overrides come after the file, so they win.
                self.assertLess(deployment.index(f"@infra/main.{env}.parameters.json"),
                                deployment.index("namePrefix=iotdemo"))

    def test_without_a_prefix_the_parameter_files_name_prefix_stands(self):
        result = self.dry_run()
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertNotIn("namePrefix=", command_lines(result.stdout)[1])

    def test_the_dry_run_prints_no_secret_and_says_how_to_get_the_key(self):
        result = self.dry_run()
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertNotIn(SECRET, result.stdout + result.stderr)
        self.assertIn("<secret-parameters-file>", command_lines(result.stdout)[1])
        self.assertIn(f"az functionapp keys list --resource-group {self.rg} --name <functionAppName>",
                      result.stdout)
        self.assertIn("<functionAppUrl>/enrollments", result.stdout)

    def test_make_deploy_passes_its_variables_and_deploy_args(self):
        result = subprocess.run(
            [str(self.sandbox.bin / "make"), "-s", "deploy", "ENV=prod", f"RG={self.rg}",
             "LOCATION=northeurope", "DEPLOY_ARGS=--dry-run"],
            cwd=REPO, env={"PATH": str(self.sandbox.bin), "STUB_LOG": str(self.sandbox.log)},
            capture_output=True, text=True, timeout=60,
        )
        self.assertEqual(result.returncode, 0, result.stderr)
        commands = command_lines(result.stdout)
        self.assertEqual(commands[0], f"az group create --name {self.rg} --location northeurope --output none")
        self.assertIn("@infra/main.prod.parameters.json", commands[1])
        self.assertEqual(self.sandbox.calls(), [])

    def test_bad_settings_are_refused_before_anything_runs(self):
        cases = [
            ({"ENV": "staging"}, "ENV must be dev or prod"),
            ({"RG": ""}, "RG (the resource group) is required"),
            ({"RG": "bad/name"}, "not a valid resource group name"),
            ({"LOCATION": ""}, "LOCATION is required"),
            ({"LOCATION": "West Europe"}, "is not a region name"),
            ({"PREFIX": "Iot-Demo"}, "PREFIX 'Iot-Demo' must be 3 to 11 lowercase letters and digits"),
        ]
        for env, message in cases:
            with self.subTest(env=env):
                result = self.dry_run(**env)
                self.assertNotEqual(result.returncode, 0)
                self.assertIn(message, result.stderr)
                self.assertEqual(command_lines(result.stdout), [])
        result = self.sandbox.run(SCRIPT, ["--dry-run", "--colour"], cwd=REPO)
        self.assertNotEqual(result.returncode, 0)
        self.assertIn("unknown argument: --colour", result.stderr)
        self.assertEqual(self.sandbox.calls(), [])


class RealRun(unittest.TestCase):
    """The real run against stand-ins, in a scratch repository."""

    def setUp(self):
        self.tmp = tempfile.TemporaryDirectory()
        root = Path(self.tmp.name)
        (root / "tools").mkdir()
        self.sandbox = Sandbox(root / "tools")
        self.repo = root / "repo"
        self.repo.mkdir()
        self.script = scratch_repository(self.repo)
        self.sandbox.stub("package.sh", PACKAGE_STUB, where=self.repo / "scripts")

    def tearDown(self):
        self.tmp.cleanup()

    def deploy(self, *args, **env):
        base = {"ENV": "dev", "RG": "rg-iot", "LOCATION": "westeurope"}
        base.update(env)
        return self.sandbox.run(self.script, args, cwd=self.repo, **base)

    def test_it_creates_the_group_deploys_packages_and_publishes_from_the_package(self):
        result = self.deploy(PREFIX="iotdemo", NOTIFY_WEBHOOK_SECRET=SECRET)
        self.assertEqual(result.returncode, 0, result.stderr)
        calls = [(c["tool"], c["args"][:3]) for c in self.sandbox.calls()]
        self.assertEqual(
            calls,
            [
                ("az", ["bicep", "version"]),
                ("func", ["--version"]),
                ("az", ["account", "show", "--output"]),
                ("az", ["group", "create", "--name"]),
                ("az", ["deployment", "group", "create"]),
                ("package", []),
                ("func", ["azure", "functionapp", "publish"]),
                ("az", ["functionapp", "function", "keys"]),
                ("az", ["functionapp", "function", "keys"]),
                ("az", ["functionapp", "function", "keys"]),
            ],
        )
        publish = next(c for c in self.sandbox.calls() if c["args"][:1] == ["azure"])
        self.assertEqual(publish["args"], ["azure", "functionapp", "publish", "iotdemo-func-x7k2", "--custom"])
        self.assertEqual(Path(publish["cwd"]), self.repo / "dist" / "function-app")
        self.assertEqual(publish["files"], ["handler", "host.json"])
        # What the dry run shows is what runs.
        self.assertIn("cd dist/function-app && func azure functionapp publish iotdemo-func-x7k2 --custom",
                      command_lines(result.stdout))
        self.assertIn("The admin API: https://iotdemo-func-x7k2.azurewebsites.net/api", result.stdout)
        self.assertIn("ID scope 0ne00ABC123", result.stdout)
        self.assertIn("iotdemo-hub1-x7k2.azure-devices.net iotdemo-hub2-x7k2.azure-devices.net", result.stdout)
        self.assertIn("curl -sS -H \"x-functions-key: $key\"", result.stdout)
        self.assertIn("https://iotdemo-func-x7k2.azurewebsites.net/api/enrollments", result.stdout)

    def test_the_webhook_secret_goes_in_a_private_file_and_is_never_printed(self):
        result = self.deploy(NOTIFY_WEBHOOK_SECRET=SECRET)
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertNotIn(SECRET, result.stdout + result.stderr)
        deployment = next(c for c in self.sandbox.calls() if c["args"][:3] == ["deployment", "group", "create"])
        self.assertNotIn(SECRET, " ".join(deployment["args"]))
        files = deployment["parameterFiles"]
        self.assertEqual(files[0]["path"], "infra/main.dev.parameters.json")
        secret_file = files[-1]
        self.assertEqual(secret_file["parameters"], {"notifyWebhookSecret": {"value": SECRET}})
        self.assertEqual(secret_file["mode"], 0o600)
        self.assertFalse(Path(secret_file["path"]).exists(), "the secret parameter file was left behind")

    def test_without_a_secret_one_is_made_once_and_kept_for_redeployments(self):
        secrets = []
        for _ in range(2):
            result = self.deploy()
            self.assertEqual(result.returncode, 0, result.stderr)
            deployment = [c for c in self.sandbox.calls() if c["args"][:3] == ["deployment", "group", "create"]][-1]
            secrets.append(deployment["parameterFiles"][-1]["parameters"]["notifyWebhookSecret"]["value"])
            self.assertNotIn(secrets[-1], result.stdout + result.stderr)
        self.assertEqual(secrets[0], secrets[1])
        self.assertGreaterEqual(len(secrets[0]), 32)
        kept = self.repo / ".local" / "deploy" / "rg-iot.notify-webhook-secret"
        self.assertEqual(kept.read_text(), secrets[0])
        self.assertEqual(stat.S_IMODE(kept.stat().st_mode), 0o600)

    def test_one_reader_key_goes_on_every_read_only_function_from_a_private_file(self):
        result = self.deploy(NOTIFY_WEBHOOK_SECRET=SECRET)
        self.assertEqual(result.returncode, 0, result.stderr)
        keys = self.sandbox.function_keys()
        self.assertEqual(sorted(keys), sorted(SCRATCH_READERS["functions"]))
        values = {keys[f]["reader"] for f in SCRATCH_READERS["functions"]}
        self.assertEqual(len(values), 1, "one value on every read-only function")
        value = values.pop()
        self.assertGreaterEqual(len(value), 32)
        self.assertNotIn(value, result.stdout + result.stderr)
        for call in self.sandbox.calls():
            self.assertNotIn(value, " ".join(call["args"]), "the reader key was on a command line")
        files = self.sandbox.key_files()
        self.assertEqual(len(files), len(SCRATCH_READERS["functions"]))
        self.assertTrue(all(f["mode"] == 0o600 for f in files), files)
        self.assertFalse(any(Path(f["path"]).exists() for f in files), "the key file was left behind")
        self.assertIn("--function-name Enrollments --query reader --output tsv", result.stdout)

    def test_a_redeployment_keeps_the_reader_key(self):
        self.assertEqual(self.deploy(NOTIFY_WEBHOOK_SECRET=SECRET).returncode, 0)
        first = self.sandbox.function_keys()["Devices"]["reader"]
        result = self.deploy(NOTIFY_WEBHOOK_SECRET=SECRET)
        self.assertEqual(result.returncode, 0, result.stderr)
        keys = self.sandbox.function_keys()
        self.assertEqual([keys[f]["reader"] for f in SCRATCH_READERS["functions"]], [first, first])

    def test_setting_keys_waits_for_the_published_functions(self):
        not_ready = Path(self.tmp.name) / "not-ready"
        not_ready.write_text("2")
        result = self.deploy(NOTIFY_WEBHOOK_SECRET=SECRET, STUB_KEYS_NOT_READY_FILE=str(not_ready))
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertIn("Enrollments is not ready for keys yet; trying again in 0s (1 of 10)", result.stderr)
        self.assertEqual(len(self.sandbox.function_keys()), 2)

    def test_a_function_that_never_appears_stops_the_deployment_with_its_name(self):
        not_ready = Path(self.tmp.name) / "not-ready"
        not_ready.write_text("100")
        result = self.deploy(NOTIFY_WEBHOOK_SECRET=SECRET, STUB_KEYS_NOT_READY_FILE=str(not_ready),
                             KEY_SET_TRIES="3")
        self.assertNotEqual(result.returncode, 0)
        self.assertIn("the reader key could not be set on Enrollments after 3 tries", result.stderr)

    def test_a_short_secret_is_refused_before_anything_is_created(self):
        result = self.deploy(NOTIFY_WEBHOOK_SECRET="short")
        self.assertNotEqual(result.returncode, 0)
        self.assertIn("NOTIFY_WEBHOOK_SECRET must be at least 16 characters", result.stderr)
        self.assertNotIn(["group", "create"], [c["args"][:2] for c in self.sandbox.calls()])

    def test_a_missing_output_is_named(self):
        outputs = {k: v for k, v in OUTPUTS.items() if k != "functionAppName"}
        result = self.deploy(NOTIFY_WEBHOOK_SECRET=SECRET, STUB_OUTPUTS=json.dumps(outputs))
        self.assertNotEqual(result.returncode, 0)
        self.assertIn("the deployment has no output 'functionAppName'", result.stderr)
        self.assertNotIn("func", [c["tool"] for c in self.sandbox.calls() if c["args"][:1] == ["azure"]])


class Prerequisites(unittest.TestCase):
    """Each missing prerequisite stops the real run, says what to do, and nothing is created."""

    def check(self, message, with_az=True, with_func=True, remove=None, **env):
        with tempfile.TemporaryDirectory() as tmp:
            root = Path(tmp)
            (root / "tools").mkdir()
            sandbox = Sandbox(root / "tools", with_az=with_az, with_func=with_func)
            repo = root / "repo"
            repo.mkdir()
            script = scratch_repository(repo)
            if remove:
                (repo / remove).unlink()
            base = {"ENV": "dev", "RG": "rg-iot", "LOCATION": "westeurope", "NOTIFY_WEBHOOK_SECRET": SECRET}
            base.update(env)
            result = sandbox.run(script, cwd=repo, **base)
            self.assertNotEqual(result.returncode, 0)
            self.assertIn(message, result.stderr)
            self.assertEqual(command_lines(result.stdout), [])
            self.assertNotIn(["group", "create"], [c["args"][:2] for c in sandbox.calls()])

    def test_no_azure_cli(self):
        self.check("the Azure CLI (az) is not installed", with_az=False)

    def test_no_bicep(self):
        self.check("az has no Bicep: run 'az bicep install'", STUB_AZ_NO_BICEP="1")

    def test_no_core_tools(self):
        self.check("Azure Functions Core Tools (func) 4.x is not installed", with_func=False)

    def test_old_core_tools(self):
        self.check("Azure Functions Core Tools 4.x is needed; 'func --version' says 3.0.3904",
                   STUB_FUNC_VERSION="3.0.3904")

    def test_not_signed_in(self):
        self.check("az is not signed in: run 'az login'", STUB_AZ_SIGNED_OUT="1")

    def test_no_parameter_file_for_the_environment(self):
        self.check("infra/main.prod.parameters.json is missing (ENV=prod)",
                   remove="infra/main.prod.parameters.json", ENV="prod")


if __name__ == "__main__":
    unittest.main()
