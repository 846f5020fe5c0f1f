# The two commands a newcomer needs: `make demo` (the whole flow, locally) and `make test`
# (every test). Both work on a fresh machine with Rust, Node.js 20 and npm.
SHELL := bash
.SHELLFLAGS := -eu -o pipefail -c
CARGO ?= cargo
CONFORMANCE := emulator/conformance

.PHONY: test lint unit api-test scripts-test infra-test conformance demo up down bench package publish deploy

## test: formatting, lints, every Rust test (with Azurite), the scripts' tests (the deploy dry
## run), the offline checks of infra/ (Bicep parsed with pycep-parser), and the official-SDK
## conformance suite, and schemathesis over the admin API
test: lint unit api-test scripts-test infra-test conformance

# ShellCheck (Debian's package, installed when missing) over every shell script, at warning level;
# cargo-deny (built once into .local/tools) over the dependency tree: licenses, duplicates, sources.
SHELL_SCRIPTS := $(wildcard scripts/*.sh) infra/tests/run.sh emulator/conformance/run.sh .ci/run

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets --locked -- -D warnings
	scripts/test-tools.sh shellcheck
	shellcheck -x -S warning $(SHELL_SCRIPTS)
	scripts/cargo-deny.sh

# The handler's API tests need Table Storage: an in-memory Azurite on a free port, from the
# committed lockfile, stopped afterwards.
# The tests drive Debian's Chromium, ChromeDriver and strace (installed when missing).
# The API tests run the package itself (FUNCTION_APP), so what is tested is what would be
# deployed; handler/tests/package.rs inspects the zip.
unit: package
	scripts/test-tools.sh
	FUNCTION_APP=$(CURDIR)/dist/function-app scripts/with-azurite.sh $(CARGO) test --workspace --locked

# schemathesis (PyPI packages pinned in scripts/api-test/requirements.txt, in .local/api-test-venv)
# over docs/openapi.json against the package running in the emulator's Functions host stand-in,
# with its own in-memory Azurite: no 5xx, and every status, content type and body as documented.
# A fixed seed and a fixed number of examples per operation: about a minute.
api-test: package
	$(CARGO) build --locked --quiet -p emulator --bin emulator
	FUNCTION_APP=$(CURDIR)/dist/function-app scripts/api-test.sh

# The deploy script against fake az and func (standard-library Python, no network), and
# `make demo` run as a newcomer would: without a terminal, and with KEEP=1 until interrupted.
scripts-test:
	python3 scripts/tests/run.py

# infra/'s Bicep, parsed and checked against the handler's settings, routes, roles and secrets
# (PyPI packages pinned in infra/tests/requirements.txt, in infra/.venv).
infra-test:
	infra/tests/run.sh

conformance: $(CONFORMANCE)/node_modules/.installed
	$(CARGO) build --locked -p emulator --bin emulator
	EMULATOR_BIN=$(CURDIR)/target/debug/emulator $(CONFORMANCE)/run.sh

# npm packages come from the committed lockfile only.
$(CONFORMANCE)/node_modules/.installed: $(CONFORMANCE)/package-lock.json
	cd $(CONFORMANCE) && npm ci --no-audit --no-fund
	touch $@

## demo: start a local emulator, enroll and provision devices, explain each step, stop;
## `make demo KEEP=1` (or a yes when asked on a terminal) stays up afterwards with the portal,
## the dashboard and dpsctl to try, until Ctrl-C
demo:
	KEEP="$(KEEP)" scripts/demo.sh

## up / down: the local stack in the background (Azurite, emulator, function app on 7071);
## `up` writes .local/endpoints.json
up:
	scripts/up.sh

down:
	scripts/down.sh

## package: the function app as Azure runs it: dist/function-app/ and dist/function-app.zip
## (host.json, the static `handler`, one <Function>/function.json per function)
package:
	scripts/package.sh

## publish: `make publish APP=<function app name>` uploads the package with Core Tools
publish: package
	@[[ -n "$(APP)" ]] || { echo "usage: make publish APP=<function app name>" >&2; exit 1; }
	cd dist/function-app && func azure functionapp publish "$(APP)" --custom

## deploy: `make deploy RG=<group> LOCATION=<region> [ENV=dev|prod] [PREFIX=<name>]`: infra/, the
## package and the publish into Azure (docs/deploy.md); DEPLOY_ARGS=--dry-run prints the commands only
deploy:
	scripts/deploy.sh $(DEPLOY_ARGS)

## bench: DPS, hub and handler figures next to references measured in the same run
bench:
	scripts/bench.sh
