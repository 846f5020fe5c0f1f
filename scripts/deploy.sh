#!/usr/bin/env bash
# `make deploy`: puts the whole solution into an Azure subscription (docs/deploy.md).
#
#   1. az group create                    the resource group
#   2. az deployment group create         infra/main.bicep with infra/main.<env>.parameters.json
#                                         (every resource, setting, route and role)
#   3. scripts/package.sh                 the function app as Azure runs it (dist/function-app)
#   4. func azure functionapp publish     the package, from dist/function-app, --custom
#   5. az functionapp function keys set   the reader key on each read-only function
#                                         (functions/readers.json), one value for all
#   then prints the function URL and how to enroll a first device.
#
# Settings come from the environment (make passes its command-line variables) or from options:
#   ENV=dev|prod        --env        which infra/main.<env>.parameters.json (default dev)
#   RG=<name>           --rg         the resource group (required)
#   LOCATION=<region>   --location   its region and the resources' (required, e.g. westeurope)
#   PREFIX=<name>       --prefix     overrides the parameter file's namePrefix (3-11 a-z0-9)
#   NOTIFY_WEBHOOK_SECRET            the status notifications' signing secret (16+ characters);
#                                    unset: one is made on the first run and kept in
#                                    .local/deploy/<RG>.notify-webhook-secret (mode 0600)
#   --dry-run                        print every command, in order, and run none (no az, no
#                                    func, no build); values that come from an earlier step's
#                                    outputs are shown as <placeholders>
#
# Every command is printed before it runs, as `+ <command>`. Nothing secret is printed: the
# webhook secret travels in a temporary parameter file and the reader key in a temporary file
# that az reads (`--key-value @file`), never on a command line.
# None of this could be run against Azure from the project's own machines (no subscription, no
# Bicep compiler); scripts/tests/test_deploy.py checks the dry run and the real run with
# stand-ins for az and func.
set -euo pipefail
cd "$(dirname "$0")/.."

usage() {
  cat <<'EOF'
usage: make deploy RG=<resource group> LOCATION=<region> [ENV=dev|prod] [PREFIX=<name>] [DEPLOY_ARGS=--dry-run]
   or: scripts/deploy.sh [--dry-run] [--env dev|prod] --rg <resource group> --location <region> [--prefix <name>]
EOF
}

fail() {
  echo "deploy: $*" >&2
  exit 1
}

dry_run=false
env_name=${ENV:-dev}
resource_group=${RG:-}
location=${LOCATION:-}
prefix=${PREFIX:-}
while [[ $# -gt 0 ]]; do
  case $1 in
    --dry-run) dry_run=true ;;
    --env | --rg | --location | --prefix)
      [[ $# -ge 2 ]] || { usage >&2; fail "$1 needs a value"; }
      case $1 in
        --env) env_name=$2 ;;
        --rg) resource_group=$2 ;;
        --location) location=$2 ;;
        --prefix) prefix=$2 ;;
      esac
      shift
      ;;
    -h | --help) usage; exit 0 ;;
    *) usage >&2; fail "unknown argument: $1" ;;
  esac
  shift
done

# The values are checked before anything runs, in the dry run too, so a typo fails in seconds
# rather than after a ten-minute deployment.
case $env_name in
  dev | prod) ;;
  *) fail "ENV must be dev or prod (it picks infra/main.<env>.parameters.json), not '$env_name'" ;;
esac
[[ -n $resource_group ]] || { usage >&2; fail "RG (the resource group) is required"; }
# Azure's rule for resource group names: 1-90 letters, digits, _ - . ( ), not ending in a period.
if [[ ! $resource_group =~ ^[-A-Za-z0-9_.()]{1,90}$ || $resource_group == *. ]]; then
  fail "RG '$resource_group' is not a valid resource group name (1-90 letters, digits, _ - . ( ), not ending in '.')"
fi
[[ -n $location ]] || {
  usage >&2
  fail "LOCATION is required: the region of the resource group and its resources, one that offers Flex Consumption (az functionapp list-flexconsumption-locations)"
}
[[ $location =~ ^[a-z0-9]+$ ]] || fail "LOCATION '$location' is not a region name (lowercase letters and digits, such as westeurope)"
if [[ -n $prefix && ! $prefix =~ ^[a-z0-9]{3,11}$ ]]; then
  fail "PREFIX '$prefix' must be 3 to 11 lowercase letters and digits (resource names are built from it)"
fi

template=infra/main.bicep
parameters=infra/main.${env_name}.parameters.json
deployment_name=iot-provisioning-${env_name}
app_dir=dist/function-app

# quoted ARGS...: one command line as a shell would read it; <placeholders> stay readable.
quoted() {
  local arg out=()
  for arg in "$@"; do
    if [[ $arg =~ ^[-A-Za-z0-9_@%+=:,./\<\>]+$ ]]; then
      out+=("$arg")
    else
      out+=("'${arg//\'/\'\\\'\'}'")
    fi
  done
  echo "${out[*]}"
}

# show ARGS...: the line printed before a command runs (and instead of it in the dry run).
show() {
  echo "+ $(quoted "$@")"
}

# run ARGS...: prints the command, then runs it unless this is a dry run.
run() {
  show "$@"
  $dry_run || "$@"
}

# Prerequisites, in the real run only: each missing tool says how to get it.
check_prerequisites() {
  command -v az >/dev/null ||
    fail "the Azure CLI (az) is not installed: see https://learn.microsoft.com/cli/azure/install-azure-cli"
  az bicep version >/dev/null 2>&1 ||
    fail "az has no Bicep: run 'az bicep install' (or 'az bicep upgrade'), then try again"
  command -v func >/dev/null ||
    fail "Azure Functions Core Tools (func) 4.x is not installed: see https://learn.microsoft.com/azure/azure-functions/functions-run-local"
  local version
  version=$(func --version 2>/dev/null) || fail "'func --version' failed: reinstall Azure Functions Core Tools 4.x"
  [[ $version == 4.* ]] || fail "Azure Functions Core Tools 4.x is needed; 'func --version' says $version"
  command -v python3 >/dev/null || fail "python3 is needed (it reads the deployment's outputs)"
  az account show --output none 2>/dev/null ||
    fail "az is not signed in: run 'az login' (and 'az account set --subscription <id>' to pick a subscription)"
  [[ -f $template ]] || fail "$template is missing"
  [[ -f $parameters ]] || fail "$parameters is missing (ENV=$env_name)"
}

# The webhook secret: NOTIFY_WEBHOOK_SECRET, or the one kept from an earlier run, or a new one.
# Kept so that a redeployment does not change what the notifications' receiver checks against.
webhook_secret() {
  local kept=.local/deploy/${resource_group}.notify-webhook-secret
  if [[ -n ${NOTIFY_WEBHOOK_SECRET:-} ]]; then
    [[ ${#NOTIFY_WEBHOOK_SECRET} -ge 16 ]] || fail "NOTIFY_WEBHOOK_SECRET must be at least 16 characters"
    printf '%s' "$NOTIFY_WEBHOOK_SECRET"
    return
  fi
  if [[ ! -s $kept ]]; then
    mkdir -p .local/deploy
    (umask 077 && python3 -c 'import secrets; print(secrets.token_urlsafe(32), end="")' >"$kept")
    echo "deploy: made a webhook signing secret, kept in $kept (give it to the notifications' receiver)" >&2
  fi
  cat "$kept"
}

# secret_parameters FILE: an ARM parameter file holding notifyWebhookSecret, readable by us only.
secret_parameters() {
  local file=$1 secret
  secret=$(webhook_secret)
  (umask 077 && NOTIFY_SECRET_VALUE=$secret python3 - "$file" <<'PY'
import json, os, sys
json.dump({
    "$schema": "https://schema.management.azure.com/schemas/2019-04-01/deploymentParameters.json#",
    "contentVersion": "1.0.0.0",
    "parameters": {"notifyWebhookSecret": {"value": os.environ["NOTIFY_SECRET_VALUE"]}},
}, open(sys.argv[1], "w"))
PY
  )
}

# output NAME: one output of the deployment (never a secret: infra/ keeps secrets out of them).
output() {
  python3 - "$outputs_file" "$1" <<'PY'
import json, sys
outputs = json.load(open(sys.argv[1])) or {}
name = sys.argv[2]
# az prints the names as the template spells them; match regardless of case, as ARM does.
found = {key.lower(): value for key, value in outputs.items()}.get(name.lower())
if found is None:
    sys.exit(f"deploy: the deployment has no output {name!r}: infra/main.bicep and scripts/deploy.sh disagree")
value = found.get("value")
print(" ".join(value) if isinstance(value, list) else value)
PY
}

if $dry_run; then
  echo "Dry run: the commands 'make deploy' runs, in order; nothing is run. Values from the" \
    "deployment's outputs are <placeholders>; <secret-parameters-file> is a temporary file" \
    "holding notifyWebhookSecret."
  [[ -f $template ]] || echo "deploy: note: $template does not exist yet" >&2
  [[ -f $parameters ]] || echo "deploy: note: $parameters does not exist yet" >&2
  secret_file="<secret-parameters-file>"
else
  check_prerequisites
  work=$(mktemp -d)
  trap 'rm -rf "$work"' EXIT
  secret_file=$work/secret.parameters.json
  secret_parameters "$secret_file"
fi

overrides=("location=$location")
[[ -n $prefix ]] && overrides+=("namePrefix=$prefix")

run az group create --name "$resource_group" --location "$location" --output none

deploy=(az deployment group create --resource-group "$resource_group" --name "$deployment_name"
  --template-file "$template" --parameters "@$parameters" --parameters "${overrides[@]}"
  --parameters "@$secret_file" --query properties.outputs --output json)
if $dry_run; then
  show "${deploy[@]}"
  function_app="<functionAppName>"
  function_url="<functionAppUrl>"
  id_scope="<dpsIdScope>"
  dps_endpoint="<dpsGlobalEndpoint>"
  hub_hosts="<hubHostNames>"
else
  echo "Deploying $template to $resource_group (a first deployment takes 10 to 20 minutes)..."
  outputs_file=$work/outputs.json
  show "${deploy[@]}"
  "${deploy[@]}" >"$outputs_file"
  function_app=$(output functionAppName)
  function_url=$(output functionAppUrl)
  id_scope=$(output dpsIdScope)
  dps_endpoint=$(output dpsGlobalEndpoint)
  hub_hosts=$(output hubHostNames)
fi

run scripts/package.sh
if ! $dry_run && [[ ! -f $app_dir/host.json ]]; then
  fail "scripts/package.sh left no $app_dir/host.json"
fi

# Core Tools zips the folder it starts in: dist/function-app holds exactly the package
# (docs/handler.md, "Packaging and publishing"). --custom: no FUNCTIONS_WORKER_RUNTIME there.
publish=(func azure functionapp publish "$function_app" --custom)
echo "+ cd $app_dir && $(quoted "${publish[@]}")"
if ! $dry_run; then
  (cd "$app_dir" && "${publish[@]}")
fi

# The reader key: one function key, the same on every read-only function, that reads the registry
# and opens nothing that reveals a key, changes anything or drives a device (docs/handler.md,
# "Keys"). A function key belongs to a function the host has: the host answers 404 for any other
# (Azure/azure-functions-host KeysController, IsFunction), and the functions of a custom-handler
# app exist only once its package is published, so the keys are set here rather than in infra/.
# A reader key already on the first read-only function is kept, so a redeployment does not lock
# out the readers. Setting is retried while the published functions are still being listed.
readers=functions/readers.json
reader_name=$(python3 -c 'import json, sys; print(json.load(open(sys.argv[1]))["keyName"])' "$readers")
mapfile -t reader_functions < <(python3 -c 'import json, sys; print("\n".join(json.load(open(sys.argv[1]))["functions"]))' "$readers")
[[ ${#reader_functions[@]} -gt 0 ]] || fail "$readers lists no read-only function"
key_tries=${KEY_SET_TRIES:-10}
key_wait=${KEY_SET_WAIT_SECONDS:-15}
existing=(az functionapp function keys list --resource-group "$resource_group" --name "$function_app"
  --function-name "${reader_functions[0]}" --query "$reader_name" --output tsv)
show "${existing[@]}"
if $dry_run; then
  reader_file="<reader-key-file>"
else
  reader_file=$work/reader-key
  kept=$("${existing[@]}" 2>/dev/null || true)
  if [[ -n $kept ]]; then
    (umask 077 && printf '%s' "$kept" >"$reader_file")
  else
    (umask 077 && python3 -c 'import secrets; print(secrets.token_urlsafe(32), end="")' >"$reader_file")
  fi
  unset kept
fi
for function in "${reader_functions[@]}"; do
  set_key=(az functionapp function keys set --resource-group "$resource_group" --name "$function_app"
    --function-name "$function" --key-name "$reader_name" --key-value "@$reader_file" --output none)
  show "${set_key[@]}"
  $dry_run && continue
  for try in $(seq 1 "$key_tries"); do
    "${set_key[@]}" && break
    [[ $try -lt $key_tries ]] ||
      fail "the $reader_name key could not be set on $function after $key_tries tries: is it in the published package (functions/$function)?"
    echo "deploy: $function is not ready for keys yet; trying again in ${key_wait}s ($try of $key_tries)" >&2
    sleep "$key_wait"
  done
done

if $dry_run; then
  printf '\nThen it prints (with the values from the outputs):\n'
else
  printf '\nDeployed.'
fi
cat <<EOF
The admin API: $function_url (function app $function_app, resource group $resource_group)
DPS: ID scope $id_scope, device endpoint $dps_endpoint; hubs: $hub_hosts

Next: fetch a function key (it is a secret: it stays in your shell) and enroll a device:

  key=\$(az functionapp keys list --resource-group $resource_group --name $function_app --query functionKeys.default --output tsv)
  curl -sS -H "x-functions-key: \$key" -H 'content-type: application/json' \\
    -d '{"registrationId":"therm-001","customer":{"id":"contoso","name":"Contoso"},"asset":{"serialNumber":"SN-1","model":"TX-100"}}' \\
    $function_url/enrollments
  curl -sS -H "x-functions-key: \$key" $function_url/enrollments/therm-001/provisioning-code

Then paste the code into the device's portal (the device program's portal role; see docs/deploy.md and docs/device.md).

For tools that only read (dashboards, reports), the reader key opens the read routes and nothing
that reveals a key, changes anything or drives a device:

  reader=\$(az functionapp function keys list --resource-group $resource_group --name $function_app --function-name ${reader_functions[0]} --query $reader_name --output tsv)
EOF
