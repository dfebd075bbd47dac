# Two set-up commands: `make demo` and `make test`. Both create .venv and install the
# pinned tree (requirements.lock) and the `tailcal` command when either is missing or
# older than the lock or pyproject.toml.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.tailcal-installed
DEMO_CONFIG ?= configs/demo.yaml
# pytest-xdist processes for `make test`: most tests wait on servers, so two overlap well on 2 cores
TEST_WORKERS ?= 2
DEMO_DATA := $(abspath data/demo)
UI_MLFLOW_PORT ?= 5000
UI_PREFECT_PORT ?= 4200
UI_PREFECT_HOME ?= $(abspath .prefect)
GATEWAY_PORT ?= 4000
GATEWAY_DIR ?= $(abspath data/gateway)
STACK_CONFIG ?= configs/stack.yaml
STACK_HOME ?= $(abspath data/stack/services)
STACK_ARGS ?=

.PHONY: install demo test lint format bench ui deploy gateway-env gateway stack stack-demo ablation clean

install: $(STAMP)

$(STAMP): requirements.lock pyproject.toml
	@command -v $(PYTHON) >/dev/null || { echo "tailcal needs Python 3.11: install it or run make PYTHON=/path/to/python3.11"; exit 1; }
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --upgrade pip==25.3
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -r requirements.lock
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --no-deps --no-build-isolation -e .
	@touch $(STAMP)

demo: install
	$(BIN)/tailcal run --config $(DEMO_CONFIG)

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: install
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

test: lint
	$(BIN)/python -m pytest -n $(TEST_WORKERS) --dist loadfile

bench: install
	$(BIN)/python bench/gen_pool.py --n 80000 --workers 2

# Every server, worker and proxy below gets its environment from tasks.services.offline_environment:
# offline, MLflow's server (it imports litellm) would otherwise hang fetching litellm's price map.

# MLflow UI on :5000 and Prefect UI on :4200 (UI_MLFLOW_PORT, UI_PREFECT_PORT) for the demo's stores;
# Ctrl-C stops both, with everything they started.
ui: install
	$(BIN)/python -m flows.deploy_local ui --mlflow-store sqlite:///$(DEMO_DATA)/mlflow.db \
		--prefect-home $(UI_PREFECT_HOME) --mlflow-port $(UI_MLFLOW_PORT) --prefect-port $(UI_PREFECT_PORT)

# A local Prefect server (UI on :4200) + process worker, with prefect.yaml's deployments.
deploy: install
	$(BIN)/python -m flows.deploy_local deploy

# The LiteLLM proxy's own pinned environment, .venv-gateway, from requirements-gateway.lock
# (litellm[proxy] needs gunicorn < 24; requirements.lock holds 26.2.0). `make gateway` builds it too.
gateway-env: install
	$(BIN)/python -m tasks.testing.gateway_env

# The LiteLLM proxy on :$(GATEWAY_PORT) in front of the reference scorer, keyed by LITELLM_MASTER_KEY.
gateway: install
	$(BIN)/python -m tasks.testing.litellm_proxy --port $(GATEWAY_PORT) --work-dir $(GATEWAY_DIR)

# The production column on one machine, until Ctrl-C (which stops everything it started): Redis (the
# server on :6379, else the embedded Valkey), S3 (moto's server, :9000) holding STACK_CONFIG's pool,
# MLflow (:5000; PostgreSQL on :5432 when it answers, else SQLite; artefacts in that S3), the LiteLLM
# proxy (:4000, master key from LITELLM_MASTER_KEY or drawn at random) in front of the reference
# scorer, Prometheus (:9090; Debian's package, apt-get installs it when missing) scraping the flow
# run's metrics (:9464), a Prefect server (:4200) with two process workers. Other ports:
# STACK_ARGS="--prefect-port 4201 --mlflow-port 5001 --s3-port 9001 --prometheus-port 9091".
stack: install
	$(BIN)/python -m flows.stack up --config $(STACK_CONFIG) --home $(STACK_HOME) $(STACK_ARGS)

# The release cycle through `prefect deployment run` on the stack `make stack` runs in another shell;
# prints where to look.
stack-demo: install
	$(BIN)/python -m flows.stack demo --home $(STACK_HOME)

# A small ablation grid on the demo data (the full grid: tailcal ablate).
ablation: install
	$(BIN)/tailcal ablate --config $(DEMO_CONFIG) --strategies random topk hard_tail_mix \
		--estimators MEAN_MINMAX MINMAX --seeds 0 1 --ks 64

clean:
	rm -rf data .prefect .prefect-server
