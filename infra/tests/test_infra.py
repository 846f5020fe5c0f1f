"""Offline checks of infra/: the Bicep parses, sets what the handler and its bindings read, routes
what the handler consumes, grants the roles the code needs, and keeps every secret in Key Vault.

Each rule is also shown failing on a deliberately broken copy of the templates (the Broken* tests),
so a check that cannot fail would be noticed.
"""

from __future__ import annotations

import json
import re

import pytest

import bicepcheck as bc

CONTRACT_PARAMETERS = {
    "namePrefix",
    "location",
    "hubs",
    "hubSku",
    "hubCapacity",
    "dpsAllocationPolicy",
    "eventHubPartitionCount",
    "maximumInstanceCount",
    "instanceMemoryMB",
    "notifyWebhookSecret",
}
CONTRACT_OUTPUTS = {
    "functionAppName",
    "functionAppUrl",
    "dpsIdScope",
    "dpsGlobalEndpoint",
    "dpsName",
    "hubHostNames",
    "eventHubsNamespace",
    "storageAccountName",
    "keyVaultName",
    "logicAppName",
}


@pytest.fixture(scope="module")
def dep() -> bc.Deployment:
    return bc.load()


def source(rel: str) -> str:
    return (bc.INFRA / rel).read_text()


def broken(rel: str, *edits) -> bc.Deployment:
    """The deployment with edits in one file: broken(rel, old, new) or broken(rel, (old, new), ...).
    Each edit must apply, so a stale fixture fails rather than passing vacuously."""
    if edits and isinstance(edits[0], str):
        edits = (tuple(edits),)
    text = source(rel)
    for old, new in edits:
        assert old in text, f"the fixture edit no longer applies to {rel}: {old!r}"
        text = text.replace(old, new, 1)
    return bc.load(overrides={rel: text})


# -- parsing and wiring ------------------------------------------------------------------------


def test_every_bicep_file_parses_and_main_reaches_every_module():
    files = [p.relative_to(bc.INFRA).as_posix() for p in bc.bicep_files()]
    assert "main.bicep" in files
    dep = bc.load()
    reached = {scope.path for scope in dep.scopes()}
    assert reached == set(files), f"modules not deployed by main.bicep: {set(files) - reached}"


def test_pycep_rejects_broken_syntax():
    with pytest.raises(ValueError, match="broken.bicep"):
        bc.parse_text("resource x 'Microsoft.Storage/storageAccounts@2023-05-01' = {\n  name: 'a'\n", "broken.bicep")


def test_modules_get_exactly_the_parameters_they_declare(dep):
    assert bc.check_module_wiring(dep) == []


def test_broken_module_call_is_reported():
    dep = broken("main.bicep", "    dpsIdScope: dps.outputs.idScope\n", "")
    assert any("does not pass dpsIdScope" in p for p in bc.check_module_wiring(dep))


def test_broken_use_of_a_missing_module_output_is_reported():
    dep = broken("modules/iothub.bicep", "output hostName string", "output host string")
    problems = bc.check_module_wiring(dep)
    assert "main.bicep: uses iotHubs.outputs.hostName, which modules/iothub.bicep does not output" in problems


def test_parameters_and_outputs_follow_the_deploy_contract(dep):
    main = dep.docs["main.bicep"]
    params = main["parameters"]
    assert set(params) == CONTRACT_PARAMETERS
    assert params["hubs"]["default"] == [{"name": "hub1"}, {"name": "hub2"}]
    assert params["hubSku"]["default"] == "S1"
    assert params["hubCapacity"]["default"] == 1
    assert params["dpsAllocationPolicy"]["default"] == "Hashed"
    assert params["eventHubPartitionCount"]["default"] == 4
    assert params["maximumInstanceCount"]["default"] == 40
    assert params["instanceMemoryMB"]["default"] == 2048
    allowed = {d["type"]: d.get("argument") for d in params["instanceMemoryMB"]["decorators"]}
    assert allowed["allowed"] == [512, 2048, 4096]
    allowed = {d["type"]: d.get("argument") for d in params["dpsAllocationPolicy"]["decorators"]}
    assert allowed["allowed"] == ["Hashed", "GeoLatency", "Static"]
    assert set(main["outputs"]) == CONTRACT_OUTPUTS
    url = bc.Scope(dep, "main.bicep").resolve(main["outputs"]["functionAppUrl"]["value"])
    assert isinstance(url, str) and url.startswith("https://") and url.endswith("/api")


@pytest.mark.parametrize("env", ["dev", "prod"])
def test_parameter_files_set_only_declared_parameters_and_no_secret(dep, env):
    doc = json.loads((bc.INFRA / f"main.{env}.parameters.json").read_text())
    params = dep.docs["main.bicep"]["parameters"]
    given = doc["parameters"]
    assert set(given) <= set(params), set(given) - set(params)
    assert "notifyWebhookSecret" not in given, "secrets are passed at deploy time, not committed"
    assert re.fullmatch(r"[a-z0-9]{3,11}", given["namePrefix"]["value"])
    assert given["instanceMemoryMB"]["value"] in (512, 2048, 4096)


# -- settings ----------------------------------------------------------------------------------


def test_config_rs_is_read():
    settings = bc.handler_settings()
    assert "DPS_SERVICE_CONNECTION_STRING" in settings["SETTINGS"]
    assert "REGISTRY_EVENTS" in settings["HOST_SETTINGS"]


def test_app_settings_cover_the_handler_and_its_bindings(dep):
    required = bc.required_app_settings()
    assert "REGISTRY_EVENTS" in required and "REGISTRY_EVENT_HUB_NAME" in required
    assert bc.check_settings_cover(dep, required) == []


def test_identity_based_connections_in_azure(dep):
    settings = bc.app_settings(dep)
    assert "AzureWebJobsStorage" not in settings and "AzureWebJobsStorage__accountName" in settings
    assert "REGISTRY_EVENTS" not in settings and "REGISTRY_EVENTS__fullyQualifiedNamespace" in settings
    trigger = bc.event_hub_trigger(bc.function_bindings())
    assert settings["REGISTRY_EVENT_HUB_NAME"] == "hub-events"
    assert trigger["eventHubName"] == "%REGISTRY_EVENT_HUB_NAME%"


def test_broken_missing_app_setting_is_reported():
    dep = broken(
        "modules/functionapp.bicep",
        "        {\n          name: 'DPS_ID_SCOPE'\n          value: dpsIdScope\n        }\n",
        "",
    )
    assert bc.check_settings_cover(dep, bc.required_app_settings()) == [
        "app setting DPS_ID_SCOPE (or an identity-based DPS_ID_SCOPE__*) is not set by the Bicep"
    ]


def test_broken_flex_forbidden_setting_is_reported():
    dep = broken(
        "modules/functionapp.bicep",
        "        {\n          name: 'REGISTRY_TABLE_PREFIX'",
        "        {\n          name: 'FUNCTIONS_WORKER_RUNTIME'\n          value: 'custom'\n        }\n"
        "        {\n          name: 'REGISTRY_TABLE_PREFIX'",
    )
    assert any("FUNCTIONS_WORKER_RUNTIME must not be set" in p for p in bc.check_settings_cover(dep, bc.required_app_settings()))


def test_broken_secret_setting_without_key_vault_is_reported():
    dep = broken(
        "modules/functionapp.bicep",
        "value: '@Microsoft.KeyVault(SecretUri=${secretUris.notifyWebhookSecret})'",
        "value: 'a-webhook-secret-in-plain-sight'",
    )
    problems = bc.check_settings_cover(dep, bc.required_app_settings())
    assert any("NOTIFY_WEBHOOK_SECRET holds a secret" in p for p in problems)


def test_local_settings_set_the_same_names():
    assert bc.check_local_settings(bc.local_settings(), bc.handler_settings(), bc.function_bindings()) == []


def test_broken_local_settings_are_reported():
    values = dict(bc.local_settings())
    del values["IOTHUB_NAMES"]
    values["STALE_SETTING"] = "x"
    assert bc.check_local_settings(values, bc.handler_settings(), bc.function_bindings()) == [
        "local.settings.json does not set IOTHUB_NAMES",
        "local.settings.json sets STALE_SETTING, which the handler and the bindings do not read",
    ]


# -- routing and the event hub -----------------------------------------------------------------


def test_event_hub_and_consumer_group_match_the_trigger(dep):
    trigger = bc.event_hub_trigger(bc.function_bindings())
    name = bc.local_settings()["REGISTRY_EVENT_HUB_NAME"]
    hubs = bc.event_hubs(dep)
    assert name in hubs, hubs
    assert trigger["consumerGroup"] in hubs[name]


def test_every_consumed_event_source_is_routed_to_the_event_hub(dep):
    assert bc.check_routes(dep, bc.app_settings(dep)["REGISTRY_EVENT_HUB_NAME"]) == []


def test_broken_missing_route_is_reported():
    dep = broken("modules/iothub.bicep", "  'TwinChangeEvents'\n", "")
    assert bc.check_routes(dep, "hub-events") == [
        "modules/iothub.bicep:hub: no enabled route sends TwinChangeEvents to an identity-based endpoint on event hub hub-events"
    ]


def test_broken_route_to_another_event_hub_is_reported():
    dep = broken("modules/iothub.bicep", "entityPath: eventHubName", "entityPath: 'other-hub'")
    assert len(bc.check_routes(dep, "hub-events")) == len(bc.CONSUMED_SOURCES)


def test_broken_fallback_route_is_reported():
    dep = broken("modules/iothub.bicep", "          'events'\n", "          'registry-events'\n")
    assert any("fallback route" in p for p in bc.check_routes(dep, "hub-events"))


# -- roles -------------------------------------------------------------------------------------


def test_each_needed_role_is_assigned(dep):
    assert bc.check_roles(dep) == []


def test_broken_missing_receiver_role_is_reported():
    dep = broken("modules/roles.bicep", "roleIds.eventHubsDataReceiver)\n    principalId", "roleIds.monitoringMetricsPublisher)\n    principalId")
    assert bc.check_roles(dep) == ["the function app's identity lacks Azure Event Hubs Data Receiver on Microsoft.EventHub/namespaces/eventhubs"]


def test_broken_missing_table_role_is_reported():
    dep = broken("modules/roles.bicep", "  roleIds.storageTableDataContributor\n]", "]")
    assert bc.check_roles(dep) == ["the function app's identity lacks Storage Table Data Contributor on Microsoft.Storage/storageAccounts"]


def test_broken_hub_sender_role_on_wrong_principal_is_reported():
    dep = broken(
        "modules/iothub.bicep",
        "    principalId: routingIdentity.properties.principalId",
        "    principalId: 'someone-else'",
    )
    assert any("lacks Azure Event Hubs Data Sender" in p for p in bc.check_roles(dep))


# -- secrets -----------------------------------------------------------------------------------


def test_key_material_stays_in_key_vault(dep):
    assert bc.check_key_material(dep) == []


def test_broken_app_setting_with_list_keys_is_reported():
    dep = broken(
        "modules/functionapp.bicep",
        "          value: '@Microsoft.KeyVault(SecretUri=${secretUris.dpsConnectionString})'",
        "          value: 'HostName=x;SharedAccessKeyName=provisioningserviceowner;SharedAccessKey=${listKeys(resourceId('Microsoft.Devices/provisioningServices/keys', 'dps', 'provisioningserviceowner'), '2022-12-12').primaryKey}'",
    )
    problems = bc.check_key_material(dep)
    assert any(p.startswith("modules/functionapp.bicep: key material at resources/site") for p in problems), problems
    assert "app setting DPS_SERVICE_CONNECTION_STRING holds key material or a secure parameter" in problems


def test_broken_output_with_callback_url_is_reported():
    dep = broken(
        "modules/logicapp.bicep",
        "output name string = workflow.name",
        "output name string = workflow.name\noutput url string = listCallbackUrl(resourceId('Microsoft.Logic/workflows/triggers', logicAppName, 'manual'), '2019-05-01').value",
    )
    assert any("modules/logicapp.bicep: key material at outputs/url" in p for p in bc.check_key_material(dep))


def test_broken_output_of_a_secure_parameter_is_reported():
    dep = broken("main.bicep", "output logicAppName string = logicApp.outputs.name", "output logicAppName string = notifyWebhookSecret")
    assert "output logicAppName holds a secret" in bc.check_key_material(dep)


def test_broken_connection_strings_through_a_plain_module_parameter_are_reported():
    dep = broken("modules/keyvault.bicep", "@secure()\nparam hubConnectionStrings object", "param hubConnectionStrings object")
    assert bc.check_key_material(dep) == [
        "main.bicep: key material at modules/keyVault/config/params/hubConnectionStrings/values/config"
        " (allowed only in Key Vault secrets, DPS hub links and @secure() module parameters)"
    ]


def test_no_host_key_or_early_function_key_is_made(dep):
    assert bc.check_function_keys(dep) == []


def test_broken_host_key_is_reported():
    dep = broken(
        "modules/functionapp.bicep",
        "output name string = site.name",
        "resource readers 'Microsoft.Web/sites/host/functionKeys@2024-04-01' = {\n  name: '${site.name}/default/reader'\n  properties: {\n    name: 'reader'\n  }\n}\n\noutput name string = site.name",
    )
    problems = bc.check_function_keys(dep)
    assert any("resource readers (Microsoft.Web/sites/host/functionKeys): a host key opens every function" in p for p in problems), problems


def test_broken_function_key_before_publish_is_reported():
    dep = broken(
        "modules/functionapp.bicep",
        "output name string = site.name",
        "resource readers 'Microsoft.Web/sites/functions/keys@2024-04-01' = {\n  name: '${site.name}/Devices/reader'\n  properties: {\n    name: 'reader'\n  }\n}\n\noutput name string = site.name",
    )
    problems = bc.check_function_keys(dep)
    assert any("function keys exist only after the publish" in p for p in problems), problems


def test_secret_parameters_are_secure(dep):
    assert bc.check_secure_params(dep) == []


def test_broken_secret_parameter_without_secure_is_reported():
    dep = broken("main.bicep", "@secure()\n@minLength(16)\nparam notifyWebhookSecret", "@minLength(16)\nparam notifyWebhookSecret")
    problems = bc.check_secure_params(dep)
    assert "main.bicep: parameter notifyWebhookSecret looks like a secret and is not @secure()" in problems


def test_broken_key_vault_secret_from_a_plain_parameter_is_reported():
    dep = broken(
        "modules/keyvault.bicep",
        ("@description('The webhook signing secret.')\n@secure()\nparam notifyWebhookSecret string", "param webhookValue string"),
        ("value: notifyWebhookSecret", "value: webhookValue"),
    )
    problems = bc.check_secure_params(dep)
    assert problems == ["modules/keyvault.bicep: parameter webhookValue is stored in Key Vault secret webhookSecret but is not @secure()"]


def test_handler_hub_connection_strings_use_a_least_privilege_policy(dep):
    root = dep.root()
    policy = root.resolve("hubServicePolicy")
    assert policy != "iothubowner"
    values = dep.docs["main.bicep"]["modules"]["keyVault"]["config"]["params"]["hubConnectionStrings"]["values"]
    assert "SharedAccessKeyName=${hubServicePolicy}" in values["config"]
    hub_scope = root.child("iotHubs")
    hub_body = hub_scope.resource_body("hub")
    policies = {p["keyName"]: p["rights"] for p in hub_scope.resolve(hub_body["properties"]["authorizationPolicies"])}
    assert policies[policy] == "RegistryRead, RegistryWrite, ServiceConnect"
