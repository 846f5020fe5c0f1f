"""Offline checks over infra/*.bicep, parsed with pycep-parser.

pycep turns a Bicep file into JSON (parameters, variables, resources, modules, outputs) but
evaluates nothing. This module adds a small symbolic evaluator, enough to follow a value through
variables, parameters bound by a module call, loops over literal arrays and module outputs, and
the checks the tests run. Each check returns a list of problems (empty: the check passes), so a
test can show both that the real templates pass and that a broken one fails.

What it cannot do: type-check, know resource schemas, or evaluate runtime values (a hub's host
name, a key). Those stay symbols: `Sym` values that compare by their text.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from pycep import BicepParser

INFRA = Path(__file__).resolve().parent.parent
REPO = INFRA.parent

# Built-in Azure role definition ids (MicrosoftDocs/azure-docs
# articles/role-based-access-control/built-in-roles.md).
ROLES = {
    "Storage Blob Data Owner": "b7e6dc6d-f1e8-4753-8033-0f276bb0955b",
    "Storage Queue Data Contributor": "974c5e8b-45b9-4653-ba55-5f855dd0fb88",
    "Storage Table Data Contributor": "0a9a7e1f-b9d0-4cc4-a60d-0319b160aaa3",
    "Azure Event Hubs Data Sender": "2b629674-e913-4c01-ae53-ef4638d8f975",
    "Azure Event Hubs Data Receiver": "a638d3c7-ab3a-418d-83e6-5f17a39d4fde",
    "Key Vault Secrets User": "4633458b-17de-408a-b874-0445c86b69e6",
}

# Settings the handler lists but Azure must not get from infra/: the host sets the port; the extra
# CA is the emulator's, for development only.
HOST_PROVIDED = {"FUNCTIONS_CUSTOMHANDLER_PORT"}
DEV_ONLY = {"EXTRA_TRUSTED_CA_FILE"}
# Names local.settings.json may set for the local host only.
LOCAL_ONLY = {"FUNCTIONS_WORKER_RUNTIME"}
# Not to be set on Flex Consumption (MicrosoftDocs/azure-docs
# articles/azure-functions/functions-app-settings.md, "Flex Consumption plan deprecations").
FLEX_FORBIDDEN = re.compile(
    r"^(FUNCTIONS_WORKER_RUNTIME|WEBSITE_RUN_FROM_PACKAGE|WEBSITE_CONTENT\w*|FUNCTIONS_EXTENSION_VERSION)$"
)
# The app settings holding secrets: Key Vault references only.
SECRET_SETTINGS = {
    "DPS_SERVICE_CONNECTION_STRING",
    "IOTHUB_CONNECTION_STRINGS",
    "NOTIFY_WEBHOOK_SECRET",
    "NOTIFY_WEBHOOK_URL",
}
KEY_VAULT_REFERENCE = "@Microsoft.KeyVault(SecretUri="
# The event sources OnHubEvents consumes (docs/handler.md, "Event functions").
CONSUMED_SOURCES = ["DeviceLifecycleEvents", "TwinChangeEvents", "DeviceConnectionStateEvents"]
# Parameter names that must be @secure().
SECRET_PARAM_NAME = re.compile(r"(secret|password|token|connectionstring|sas|apikey|accesskey|key$)", re.I)
# ... unless the name says it holds a name, id or URI of one.
NOT_SECRET_PARAM_NAME = re.compile(r"(Name|Names|Uri|Uris|Id|Ids)$")
# Key material in a parsed expression: list* functions, or a key spelled into a string.
KEY_MATERIAL = re.compile(
    r'"type": "list_func"|"type": "list[A-Z]\w*"|\blist[A-Z]\w*\(|listkeys\(|SharedAccessKey=|AccountKey=',
)

_PARSER = BicepParser()


def parse_text(text: str, name: str = "<text>") -> dict:
    """Parses Bicep source, raising ValueError naming the file when pycep rejects it."""
    try:
        return _PARSER.parse(text=text)
    except Exception as error:  # pycep raises lark and ValueError types
        raise ValueError(f"{name} does not parse: {error}") from error


@dataclass(frozen=True)
class Sym:
    """A value known only at deployment time, named by where it comes from."""

    text: str

    def __str__(self) -> str:
        return f"<{self.text}>"


SECRET_PREFIX = "SECRET:"


@dataclass
class Scope:
    """One Bicep file as deployed by one module call (or the top-level file)."""

    dep: "Deployment"
    path: str
    bindings: dict | None = None
    parent: "Scope | None" = None
    loop: dict = field(default_factory=dict)

    @property
    def doc(self) -> dict:
        return self.dep.docs[self.path]

    def with_loop(self, names: dict) -> "Scope":
        return Scope(self.dep, self.path, self.bindings, self.parent, {**self.loop, **names})

    def is_secure(self, param: str) -> bool:
        spec = self.doc.get("parameters", {}).get(param) or {}
        return any(d.get("type") == "secure" for d in spec.get("decorators") or [])

    # -- evaluation ---------------------------------------------------------------------------

    def resolve(self, expr, depth: int = 0):
        if depth > 60:
            return Sym("too deep")
        if expr is None or isinstance(expr, (bool, int, float, Sym)):
            return expr
        if isinstance(expr, str):
            return self._resolve_name(expr, depth)
        if isinstance(expr, list):
            return [self.resolve(e, depth + 1) for e in expr]
        if isinstance(expr, dict):
            if "loop_type" in expr:
                return self._expand_loop(expr, depth)
            if "operator" in expr:
                return self._resolve_operator(expr["operator"], depth)
            if "function" in expr:
                return self._resolve_function(expr["function"], depth)
            return {k: self.resolve(v, depth + 1) for k, v in expr.items()}
        return Sym(repr(expr))

    def _resolve_name(self, name: str, depth: int):
        if name in self.loop:
            return self.loop[name]
        params = self.doc.get("parameters", {})
        if name in params:
            if self.is_secure(name):
                return Sym(f"{SECRET_PREFIX}{self.path}:{name}")
            if self.bindings is not None and name in self.bindings and self.parent is not None:
                return self.parent.resolve(self.bindings[name], depth + 1)
            default = params[name].get("default")
            if default is not None:
                return self.resolve(default, depth + 1)
            return Sym(f"param {self.path}:{name}")
        variables = self.doc.get("variables", {})
        if name in variables:
            return self.resolve(variables[name]["value"], depth + 1)
        if name in self.doc.get("resources", {}) or name in self.doc.get("modules", {}):
            return Sym(f"{self.path}:{name}")
        if "${" in name:
            return self._interpolate(name, depth)
        return name

    def _interpolate(self, text: str, depth: int) -> str:
        def one(match: re.Match) -> str:
            inner = match.group(1).strip()
            if re.fullmatch(r"[A-Za-z_]\w*", inner):
                value = self.resolve(inner, depth + 1)
            elif m := re.fullmatch(r"([A-Za-z_]\w*)\.(\w+)", inner):
                value = self._property(self.resolve(m.group(1), depth + 1), m.group(1), m.group(2), depth)
            else:
                return "${" + inner + "}"
            if isinstance(value, (str, int)) and not isinstance(value, bool):
                return str(value)
            return "${" + str(value) + "}"

        return re.sub(r"\$\{([^{}]*(?:\{[^{}]*\}[^{}]*)*)\}", one, text)

    def _expand_loop(self, expr: dict, depth: int):
        detail = expr["loop_type"].get("detail") or {}
        items = self.resolve(detail.get("array_name"), depth + 1)
        body = expr.get("config")
        if not isinstance(items, list):
            names = {detail.get("item_name"): Sym(f"item of {detail.get('array_name')}")}
            if detail.get("index_name"):
                names[detail["index_name"]] = Sym(f"index of {detail.get('array_name')}")
            return [self.with_loop(names).resolve(body, depth + 1)]
        out = []
        for index, item in enumerate(items):
            names = {detail.get("item_name"): item}
            if detail.get("index_name"):
                names[detail["index_name"]] = index
            out.append(self.with_loop(names).resolve(body, depth + 1))
        return out

    def _resolve_operator(self, op: dict, depth: int):
        kind = op.get("type")
        operands = op.get("operands") or {}
        if kind == "property_accessor":
            first = operands.get("operand_1")
            second = operands.get("operand_2")
            chain = [first]
            while isinstance(second, dict) and second.get("operator", {}).get("type") == "property_accessor":
                chain.append(second["operator"]["operands"]["operand_1"])
                second = second["operator"]["operands"]["operand_2"]
            chain.append(second)
            return self._accessor_chain(chain, depth)
        if kind == "nested_resource_accessor":
            parent = operands.get("operand_1")
            rest = operands.get("operand_2")
            if isinstance(rest, str):
                return Sym(f"{self.path}:{parent}__{rest}")
            if isinstance(rest, dict) and rest.get("operator", {}).get("type") == "property_accessor":
                inner = rest["operator"]["operands"]
                return self._accessor_chain([f"{parent}__{inner['operand_1']}", inner["operand_2"]], depth)
        return Sym(json.dumps(op, sort_keys=True)[:200])

    def _accessor_chain(self, chain: list, depth: int):
        head = chain[0]
        if isinstance(head, str) and head in self.doc.get("modules", {}) and len(chain) >= 3 and chain[1] == "outputs":
            value = self.module_output(head, chain[2], depth)
            rest = chain[3:]
        elif isinstance(head, str) and head in self.doc.get("resources", {}):
            value = self._resource_property(head, [c for c in chain[1:] if isinstance(c, str)], depth)
            rest = []
        else:
            value = self.resolve(head, depth + 1)
            rest = chain[1:]
        for key in rest:
            value = self._property(value, str(head), key, depth)
        return value

    def _property(self, value, head: str, key, depth: int):
        if isinstance(value, dict) and isinstance(key, str) and key in value:
            return value[key]
        if isinstance(value, Sym):
            return Sym(f"{value.text}.{key}")
        return Sym(f"{head}.{key}")

    def _resource_property(self, symbol: str, props: list[str], depth: int):
        if props == ["name"]:
            config = self.resource_body(symbol)
            return self.resolve(config.get("name"), depth + 1)
        return Sym(f"{self.path}:{symbol}." + ".".join(props))

    def _resolve_function(self, fn: dict, depth: int):
        kind = fn.get("type")
        params = fn.get("parameters") or {}
        if kind == "subscription_resource_id" and params.get("resource_type") == "Microsoft.Authorization/roleDefinitions":
            return f"roleDefinitions/{self.resolve(params.get('resource_name_1'), depth + 1)}"
        return Sym(f"{kind}(...)")

    # -- structure ----------------------------------------------------------------------------

    def resource_body(self, symbol: str) -> dict:
        config = self.doc["resources"][symbol]["config"]
        return config.get("config", config) if "loop_type" in config else config

    def module_output(self, module: str, output: str, depth: int = 0):
        child = self.child(module)
        if child is None:
            return Sym(f"{module}.outputs.{output}")
        spec = child.doc.get("outputs", {}).get(output)
        if spec is None:
            return Sym(f"missing output {module}.{output}")
        return child.resolve(spec["value"], depth + 1)

    def child(self, module: str) -> "Scope | None":
        call = self.doc["modules"][module]
        path = self.dep.module_path(self.path, call)
        if path not in self.dep.docs:
            return None
        config = call["config"]
        loop = {}
        if "loop_type" in config:
            detail = config["loop_type"].get("detail") or {}
            loop = {detail.get("item_name"): Sym(f"item of {detail.get('array_name')}")}
            if detail.get("index_name"):
                loop[detail["index_name"]] = Sym(f"index of {detail.get('array_name')}")
            config = config.get("config", {})
        parent = self.with_loop(loop) if loop else self
        return Scope(self.dep, path, config.get("params") or {}, parent)

    def resources(self):
        """(scope, symbol, type, body) of every resource, loops expanded when their array is known."""
        for symbol, spec in self.doc.get("resources", {}).items():
            config = spec["config"]
            if "loop_type" in config:
                detail = config["loop_type"].get("detail") or {}
                items = self.resolve(detail.get("array_name"))
                if not isinstance(items, list):
                    items = [Sym(f"item of {detail.get('array_name')}")]
                for index, item in enumerate(items):
                    names = {detail.get("item_name"): item}
                    if detail.get("index_name"):
                        names[detail["index_name"]] = index
                    yield self.with_loop(names), symbol, spec["type"], config.get("config", {})
            else:
                yield self, symbol, spec["type"], config


class Deployment:
    """main.bicep and every module it reaches, parsed."""

    def __init__(self, docs: dict[str, dict], main: str = "main.bicep", sources: dict[str, str] | None = None):
        self.docs = docs
        self.main = main
        self.sources = sources or {}

    @staticmethod
    def module_path(from_path: str, call: dict) -> str:
        target = (call.get("detail") or {}).get("path", "")
        base = Path(from_path).parent
        return str((base / target)).replace("\\", "/") if str(base) != "." else target

    def root(self) -> Scope:
        return Scope(self, self.main)

    def scopes(self):
        """The top-level scope and every module call's scope, depth first."""
        pending = [self.root()]
        while pending:
            scope = pending.pop(0)
            yield scope
            for module in scope.doc.get("modules", {}):
                child = scope.child(module)
                if child is not None:
                    pending.append(child)


def bicep_files(infra: Path = INFRA) -> list[Path]:
    return sorted(p for p in infra.rglob("*.bicep") if ".venv" not in p.parts and "tests" not in p.parts)


def load(infra: Path = INFRA, overrides: dict[str, str] | None = None) -> Deployment:
    """Parses every .bicep under infra/ (overrides: relative path -> replacement source)."""
    overrides = overrides or {}
    docs, sources = {}, {}
    for path in bicep_files(infra):
        rel = path.relative_to(infra).as_posix()
        text = overrides.get(rel, path.read_text())
        docs[rel] = parse_text(text, rel)
        sources[rel] = text
    return Deployment(docs, sources=sources)


# -- what the project says the app needs -------------------------------------------------------


def handler_settings(config_rs: Path = REPO / "handler/src/config.rs") -> dict[str, list[str]]:
    """Names in SETTINGS and HOST_SETTINGS of handler/src/config.rs, constants resolved."""
    source = config_rs.read_text()
    consts = dict(re.findall(r'pub const (\w+): &str = "([^"]*)";', source))
    out = {}
    for table in ("SETTINGS", "HOST_SETTINGS"):
        match = re.search(rf"pub const {table}: &\[Setting\] = &\[(.*?)\n\];", source, re.S)
        if match is None:
            raise ValueError(f"{config_rs}: no {table} table")
        names = []
        for raw in re.findall(r'\bname:\s*("[^"]*"|\w+)', match.group(1)):
            if raw.startswith('"'):
                names.append(raw.strip('"'))
            elif raw in consts:
                names.append(consts[raw])
            else:
                raise ValueError(f"{config_rs}: {table} names unknown constant {raw}")
        out[table] = names
    return out


def function_bindings(functions: Path = REPO / "functions") -> list[dict]:
    out = []
    for path in sorted(functions.glob("*/function.json")):
        for binding in json.loads(path.read_text()).get("bindings", []):
            out.append({**binding, "_function": path.parent.name})
    return out


def binding_setting_names(bindings: list[dict]) -> set[str]:
    """Connection names and %NAME% setting references of the bindings."""
    names = set()
    for binding in bindings:
        if binding.get("connection"):
            names.add(binding["connection"])
        for value in binding.values():
            if isinstance(value, str):
                names.update(re.findall(r"%(\w+)%", value))
    return names


def required_app_settings() -> set[str]:
    settings = handler_settings()
    names = set(settings["SETTINGS"]) | set(settings["HOST_SETTINGS"]) | binding_setting_names(function_bindings())
    return names - HOST_PROVIDED - DEV_ONLY


def local_settings(path: Path = REPO / "local.settings.json") -> dict:
    return json.loads(path.read_text())["Values"]


# -- the checks --------------------------------------------------------------------------------


def function_apps(dep: Deployment):
    """(scope, symbol, body) of every function app site."""
    for scope in dep.scopes():
        for rscope, symbol, rtype, body in scope.resources():
            if rtype == "Microsoft.Web/sites" and "functionapp" in str(body.get("kind", "")):
                yield rscope, symbol, body


def app_settings(dep: Deployment) -> dict[str, object]:
    """Resolved app settings of the (one) function app: name -> value."""
    out = {}
    for scope, _symbol, body in function_apps(dep):
        raw = ((body.get("properties") or {}).get("siteConfig") or {}).get("appSettings") or []
        for entry in scope.resolve(raw):
            if isinstance(entry, list):  # a loop inside the list
                for inner in entry:
                    out[str(inner.get("name"))] = inner.get("value")
            elif isinstance(entry, dict):
                out[str(entry.get("name"))] = entry.get("value")
    return out


def check_settings_cover(dep: Deployment, required: set[str]) -> list[str]:
    settings = app_settings(dep)
    if not settings:
        return ["no function app with app settings found"]
    problems = []
    for name in sorted(required):
        if name not in settings and not any(key.startswith(name + "__") for key in settings):
            problems.append(f"app setting {name} (or an identity-based {name}__*) is not set by the Bicep")
    for name in settings:
        if FLEX_FORBIDDEN.match(name):
            problems.append(f"app setting {name} must not be set on Flex Consumption")
    for name in sorted(SECRET_SETTINGS & required):
        value = settings.get(name)
        if not (isinstance(value, str) and value.startswith(KEY_VAULT_REFERENCE)):
            problems.append(f"app setting {name} holds a secret: it must be a Key Vault reference, not {value}")
    return problems


def check_local_settings(values: dict, settings: dict[str, list[str]], bindings: list[dict]) -> list[str]:
    problems = []
    known = set(settings["SETTINGS"]) | set(settings["HOST_SETTINGS"]) | binding_setting_names(bindings)
    for name in sorted(known - HOST_PROVIDED):
        if name not in values:
            problems.append(f"local.settings.json does not set {name}")
    for name in sorted(values):
        if name not in known and name not in LOCAL_ONLY:
            problems.append(f"local.settings.json sets {name}, which the handler and the bindings do not read")
    return problems


def event_hub_trigger(bindings: list[dict]) -> dict:
    triggers = [b for b in bindings if b.get("type") == "eventHubTrigger"]
    if len(triggers) != 1:
        raise ValueError(f"expected one eventHubTrigger binding, found {len(triggers)}")
    return triggers[0]


def check_routes(dep: Deployment, event_hub_name: str, sources: list[str] = CONSUMED_SOURCES) -> list[str]:
    """Every hub routes each source to an identity-based endpoint on event_hub_name, and keeps
    telemetry on the built-in endpoint with the fallback route."""
    problems = []
    hubs = 0
    for scope in dep.scopes():
        for rscope, symbol, rtype, body in scope.resources():
            if rtype != "Microsoft.Devices/IotHubs":
                continue
            hubs += 1
            where = f"{rscope.path}:{symbol}"
            routing = rscope.resolve((body.get("properties") or {}).get("routing") or {})
            endpoints = {}
            for endpoint in (routing.get("endpoints") or {}).get("eventHubs") or []:
                endpoints[endpoint.get("name")] = endpoint
            for source in sources:
                ok = False
                for route in routing.get("routes") or []:
                    if route.get("source") != source or route.get("isEnabled") is not True:
                        continue
                    for name in route.get("endpointNames") or []:
                        endpoint = endpoints.get(name)
                        if (
                            endpoint
                            and endpoint.get("entityPath") == event_hub_name
                            and str(endpoint.get("authenticationType", "")).lower() == "identitybased"
                        ):
                            ok = True
                if not ok:
                    problems.append(
                        f"{where}: no enabled route sends {source} to an identity-based endpoint on event hub {event_hub_name}"
                    )
            fallback = routing.get("fallbackRoute") or {}
            if not (
                fallback.get("source") == "DeviceMessages"
                and "events" in (fallback.get("endpointNames") or [])
                and fallback.get("isEnabled") is True
            ):
                problems.append(f"{where}: the fallback route must keep DeviceMessages on the built-in 'events' endpoint")
    if hubs == 0:
        problems.append("no Microsoft.Devices/IotHubs resource found")
    return problems


def event_hubs(dep: Deployment) -> dict[str, list[str]]:
    """Event hub names created, each with the names of its consumer groups."""
    hubs: dict[str, list[str]] = {}
    for scope in dep.scopes():
        resources = list(scope.resources())
        for rscope, symbol, rtype, body in resources:
            if rtype == "Microsoft.EventHub/namespaces/eventhubs":
                hubs.setdefault(str(rscope.resolve(body.get("name"))), [])
        for rscope, symbol, rtype, body in resources:
            if rtype == "Microsoft.EventHub/namespaces/eventhubs/consumergroups":
                parent_symbol = symbol.rsplit("__", 1)[0] if "__" in symbol else body.get("parent")
                parent_name = str(rscope.resolve(rscope.resource_body(parent_symbol).get("name")))
                hubs.setdefault(parent_name, []).append(str(rscope.resolve(body.get("name"))))
    return hubs


def role_assignments(dep: Deployment) -> list[dict]:
    """Resolved role assignments: role guid, scope resource type, principal (a symbol)."""
    out = []
    for scope in dep.scopes():
        types = {s: t for s, t in ((s, spec["type"]) for s, spec in scope.doc.get("resources", {}).items())}
        for rscope, symbol, rtype, body in scope.resources():
            if rtype != "Microsoft.Authorization/roleAssignments":
                continue
            props = body.get("properties") or {}
            role = str(rscope.resolve(props.get("roleDefinitionId")))
            target = rscope.resolve(body.get("scope"))
            target_symbol = target.text.split(":", 1)[1] if isinstance(target, Sym) and ":" in target.text else None
            out.append(
                {
                    "where": f"{rscope.path}:{symbol}",
                    "role": role.rsplit("/", 1)[-1],
                    "scope_type": types.get(target_symbol, "resource group"),
                    "principal": str(rscope.resolve(props.get("principalId"))),
                }
            )
    return out


def check_roles(dep: Deployment) -> list[str]:
    problems = []
    assignments = role_assignments(dep)

    def has(principal: str, role: str, scope_types: tuple[str, ...]) -> bool:
        return any(
            a["principal"] == principal and a["role"] == ROLES[role] and a["scope_type"] in scope_types
            for a in assignments
        )

    apps = list(function_apps(dep))
    if not apps:
        return ["no function app found"]
    for scope, symbol, body in apps:
        principal = str(Sym(f"{scope.path}:{symbol}.identity.principalId"))
        needed = [
            ("Storage Blob Data Owner", ("Microsoft.Storage/storageAccounts",)),
            ("Storage Queue Data Contributor", ("Microsoft.Storage/storageAccounts",)),
            ("Storage Table Data Contributor", ("Microsoft.Storage/storageAccounts",)),
            ("Azure Event Hubs Data Receiver", ("Microsoft.EventHub/namespaces/eventhubs", "Microsoft.EventHub/namespaces")),
            ("Key Vault Secrets User", ("Microsoft.KeyVault/vaults",)),
        ]
        for role, scope_types in needed:
            if not has(principal, role, scope_types):
                problems.append(f"the function app's identity lacks {role} on {scope_types[0]}")
    for scope in dep.scopes():
        for rscope, symbol, rtype, body in scope.resources():
            if rtype != "Microsoft.Devices/IotHubs":
                continue
            routing = rscope.resolve((body.get("properties") or {}).get("routing") or {})
            for endpoint in (routing.get("endpoints") or {}).get("eventHubs") or []:
                identity = (endpoint.get("identity") or {}).get("userAssignedIdentity")
                if isinstance(identity, Sym) and identity.text.endswith(".id"):
                    principal = str(Sym(identity.text[: -len(".id")] + ".properties.principalId"))
                else:
                    principal = str(Sym(f"{rscope.path}:{symbol}.identity.principalId"))
                if not has(principal, "Azure Event Hubs Data Sender", ("Microsoft.EventHub/namespaces/eventhubs", "Microsoft.EventHub/namespaces")):
                    problems.append(
                        f"{rscope.path}:{symbol}: the identity of endpoint {endpoint.get('name')} lacks Azure Event Hubs Data Sender"
                    )
    return problems


def _walk(node, path):
    yield path, node
    if isinstance(node, dict):
        for key, value in node.items():
            yield from _walk(value, path + [str(key)])
    elif isinstance(node, list):
        for index, value in enumerate(node):
            yield from _walk(value, path + [str(index)])


def check_key_material(dep: Deployment) -> list[str]:
    """Key material (list* functions, keys spelled into strings) only where it must be: Key Vault
    secret values, DPS hub links, and module parameters that are @secure(). Never in app settings
    or outputs."""
    problems = []
    for rel, doc in dep.docs.items():
        allowed_roots = []
        for symbol, spec in doc.get("resources", {}).items():
            base = ["resources", symbol, "config"] + (["config"] if "loop_type" in spec["config"] else [])
            if spec["type"] == "Microsoft.KeyVault/vaults/secrets":
                allowed_roots.append(base + ["properties", "value"])
            if spec["type"] == "Microsoft.Devices/provisioningServices":
                allowed_roots.append(base + ["properties", "iotHubs"])
        scope = Scope(dep, rel)
        for module, call in doc.get("modules", {}).items():
            child = scope.child(module)
            config = call["config"]
            base = ["modules", module, "config"] + (["config"] if "loop_type" in config else [])
            for param in ((config.get("config", config) if "loop_type" in config else config).get("params") or {}):
                if child is not None and child.is_secure(param):
                    allowed_roots.append(base + ["params", param])
        reported = set()
        for path, node in _walk(doc, []):
            if not isinstance(node, (str, dict)):
                continue
            text = node if isinstance(node, str) else json.dumps(node)
            if isinstance(node, dict) and not ("function" in node or "operator" in node):
                continue
            if not KEY_MATERIAL.search(text):
                continue
            if any(path[: len(root)] == root for root in allowed_roots):
                continue
            key = "/".join(path[:4])
            if any(key.startswith(r) for r in reported):
                continue
            reported.add(key)
            problems.append(f"{rel}: key material at {'/'.join(path)} (allowed only in Key Vault secrets, DPS hub links and @secure() module parameters)")
    for name, value in app_settings(dep).items():
        text = json.dumps(value, default=str)
        if SECRET_PREFIX in text or KEY_MATERIAL.search(text):
            problems.append(f"app setting {name} holds key material or a secure parameter")
    root = dep.root()
    for name, spec in root.doc.get("outputs", {}).items():
        text = json.dumps(root.resolve(spec["value"]), default=str) + json.dumps(spec["value"])
        if SECRET_PREFIX in text or KEY_MATERIAL.search(text) or SECRET_PARAM_NAME.search(name):
            problems.append(f"output {name} holds a secret")
    return problems


# Keys of the function app that infra/ must not make: a host key opens every function-level
# function, the provisioning code (a device's key) included; a function key can only be set on a
# function the host has (Azure/azure-functions-host KeysController answers 404 otherwise), and a
# custom-handler app's functions exist only once its package is published. The reader key is set
# by scripts/deploy.sh after the publish (functions/readers.json).
FORBIDDEN_KEY_TYPES = {
    "microsoft.web/sites/host/functionkeys": "a host key opens every function, the provisioning code included",
    "microsoft.web/sites/functions/keys": "function keys exist only after the publish; scripts/deploy.sh sets them",
}


def check_function_keys(dep: Deployment) -> list[str]:
    problems = []
    for scope in dep.scopes():
        for _rscope, symbol, rtype, _body in scope.resources():
            reason = FORBIDDEN_KEY_TYPES.get(str(rtype).split("@")[0].lower())
            if reason:
                problems.append(f"{scope.path}: resource {symbol} ({rtype}): {reason}")
    return problems


def check_secure_params(dep: Deployment) -> list[str]:
    """Every parameter that is or carries a secret is @secure()."""
    problems = []
    for rel, doc in dep.docs.items():
        scope = Scope(dep, rel)
        params = doc.get("parameters", {})
        for name in params:
            if SECRET_PARAM_NAME.search(name) and not NOT_SECRET_PARAM_NAME.search(name) and not scope.is_secure(name):
                problems.append(f"{rel}: parameter {name} looks like a secret and is not @secure()")
        for symbol, spec in doc.get("resources", {}).items():
            if spec["type"] != "Microsoft.KeyVault/vaults/secrets":
                continue
            # Resolved standalone, a plain parameter stays a symbol naming it; inside a function
            # (resourceId(name), ...) it is opaque, as it should be: only direct values count.
            value = str(scope.resolve(scope.resource_body(symbol).get("properties", {}).get("value")))
            for name in params:
                if f"param {rel}:{name}>" in value and not scope.is_secure(name):
                    problems.append(f"{rel}: parameter {name} is stored in Key Vault secret {symbol} but is not @secure()")
    return problems


def check_module_wiring(dep: Deployment) -> list[str]:
    """Every module exists, gets only parameters it declares, and every one without a default."""
    problems = []
    for rel, doc in dep.docs.items():
        for module, call in doc.get("modules", {}).items():
            path = dep.module_path(rel, call)
            if path not in dep.docs:
                problems.append(f"{rel}: module {module} refers to missing {path}")
                continue
            config = call["config"]
            config = config.get("config", config) if "loop_type" in config else config
            given = set((config.get("params") or {}).keys())
            declared = dep.docs[path].get("parameters", {})
            for name in sorted(given - set(declared)):
                problems.append(f"{rel}: module {module} passes {name}, which {path} does not declare")
            for name, spec in declared.items():
                if spec.get("default") is None and name not in given:
                    problems.append(f"{rel}: module {module} does not pass {name}, which {path} requires")
            outputs = dep.docs[path].get("outputs", {})
            # pycep spreads output uses over property and index accessors and string
            # interpolations; the source text has them in one form.
            text = dep.sources.get(rel, "")
            for used in sorted(set(re.findall(rf"\b{module}(?:\[[^\]]*\])?\.outputs\.(\w+)", text))):
                if used not in outputs:
                    problems.append(f"{rel}: uses {module}.outputs.{used}, which {path} does not output")
    return problems
