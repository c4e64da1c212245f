# The two commands of CONTRACTS.md §1: `make demo` and `make test`, from nothing but Python and pip.
PYTHON ?= python3
UV := $(shell command -v uv 2>/dev/null || echo .uv-bootstrap/bin/uv)
VENV := .venv
export PREFECT_SERVER_ANALYTICS_ENABLED := false
export UV_LINK_MODE := copy

.PHONY: demo test bench sync clean

$(UV):
	$(PYTHON) -m venv .uv-bootstrap
	.uv-bootstrap/bin/pip install --quiet uv

$(VENV)/.synced: uv.lock pyproject.toml | $(UV)
	$(UV) sync --frozen --compile-bytecode
	touch $@

sync: $(VENV)/.synced

# Two workers, a test file to each at a time (module fixtures stay in one process); each worker starts
# its own Prefect server and stand-ins. Most tests wait on servers, so two cores serve two workers.
test: sync
	$(VENV)/bin/pytest -q -n 2 --dist loadfile

# `make demo KEEP=1` keeps the Prefect server (and the emulator) up for the UI link it prints, until Ctrl-C.
demo: sync
	$(VENV)/bin/python -m gpuops_cli.demo $(if $(filter 1 yes true,$(KEEP)),--keep)

bench: sync
	$(VENV)/bin/python benchmarks/describe_create_jobs.py
	$(VENV)/bin/python benchmarks/canary_rollback_time.py
	$(VENV)/bin/python benchmarks/cli_startup.py
	$(VENV)/bin/python benchmarks/pipeline_log_latency.py
	$(VENV)/bin/python benchmarks/hub_load.py
	$(VENV)/bin/python benchmarks/review_scale.py
	$(VENV)/bin/python benchmarks/offer_ranking.py

clean:
	rm -rf $(VENV) .uv-bootstrap .gpuops
