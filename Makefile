# The two commands a newcomer needs: `make demo` (the whole flow, locally) and `make test`
# (every test). Both work on a fresh machine with Rust, Node.js 20 and npm.
SHELL := bash
.SHELLFLAGS := -eu -o pipefail -c
CARGO ?= cargo
CONFORMANCE := emulator/conformance

.PHONY: test lint unit conformance demo up down bench

## test: formatting, lints, every Rust test, and the official-SDK conformance suite
test: lint unit conformance

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets --locked -- -D warnings

unit:
	$(CARGO) test --workspace --locked

conformance: $(CONFORMANCE)/node_modules/.installed
	$(CARGO) build --locked -p emulator --bin emulator
	EMULATOR_BIN=$(CURDIR)/target/debug/emulator $(CONFORMANCE)/run.sh

# npm packages come from the committed lockfile only.
$(CONFORMANCE)/node_modules/.installed: $(CONFORMANCE)/package-lock.json
	cd $(CONFORMANCE) && npm ci --no-audit --no-fund
	touch $@

## demo: start a local emulator, enroll and provision devices, explain each step, stop
demo:
	scripts/demo.sh

## up / down: a long-running local emulator; `up` writes .local/endpoints.json
up:
	scripts/up.sh

down:
	scripts/down.sh

## bench: DPS registrations per second (HTTPS, MQTT) and the emulator's peak memory
bench:
	scripts/bench.sh
