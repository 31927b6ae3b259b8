# Two commands on a fresh machine: `make run` and `make test`. Both build .venv first.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
RTO := $(VENV)/bin/rto
# torch is installed first and pinned (constraints.txt, also inside pip's build environments)
# so that no dependency swaps the CPU build for gigabytes of CUDA wheels.
TORCH ?= torch==2.13.0
export PIP_CONSTRAINT := $(CURDIR)/constraints.txt
export PIP_DISABLE_PIP_VERSION_CHECK := 1
# Stable timings and no oversubscription on small CI machines.
export OMP_NUM_THREADS ?= 1

.PHONY: venv install run test e2e soak bench crd dashboard manifests docs generate images clean

$(VENV)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet $(TORCH)
	$(PY) -m pip install --quiet -e '.[train,operator,dev]'
	touch $@

venv: $(VENV)/.installed

# `rto` on the PATH: a link to .venv's, which runs with the venv's Python wherever it is called from.
BINDIR ?= $(HOME)/.local/bin
install: venv
	mkdir -p $(BINDIR)
	ln -sf $(CURDIR)/$(VENV)/bin/rto $(BINDIR)/rto
	@case ":$$PATH:" in *":$(BINDIR):"*) echo "rto is on your PATH: $(BINDIR)/rto" ;; \
	  *) echo "linked $(BINDIR)/rto; add $(BINDIR) to PATH (export PATH=\"$(BINDIR):\$$PATH\")" ;; esac

# The embedded tiny run, every stage on this machine's CPU: outputs/tiny/ (report.html, results).
# Stages already done are kept; `make run RUN_ARGS=--restart` trains from scratch.
# It trains on every core (RUN_THREADS; an OMP_NUM_THREADS in the environment wins); the figures
# move by a point or two with the thread count, as float sums change order and sampled text with
# them (bench/RESULTS.md).
RUN_ARGS ?=
RUN_THREADS ?= $(shell nproc 2>/dev/null || echo 1)
run: export OMP_NUM_THREADS := $(RUN_THREADS)
run: venv
	$(RTO) plan -f manifests/examples/tiny.yaml
	$(RTO) run -f manifests/examples/tiny.yaml --local --output outputs $(RUN_ARGS)

test: venv
	$(PY) -m pytest -q

# The e2e suite alone (make test runs it too): on the cluster in KUBECONFIG when it answers
# (kind, k3d, real), else on the kit in ../shared/k8s (RTO_K8S_KIT), which it starts and stops.
e2e: venv
	$(PY) -m pytest -m e2e tests/e2e -v -rs

# Minutes of kill -9 against the operator over many runs on the kit.
soak: venv
	$(PY) -m pytest -m slow tests/e2e -v -rs -s

# Every benchmark; their tables replace the "Latest make bench run" section of bench/RESULTS.md.
bench: venv
	$(PY) bench/report.py

crd: venv
	$(PY) -m reasoning_operator.crd

# The Grafana dashboard (grafana-foundation-sdk) into the chart.
dashboard: venv
	$(PY) -m reasoning_operator.dashboard

# manifests/install.yaml: the chart rendered by Helm's library with its default values.
manifests: venv crd dashboard
	$(PY) -m reasoning_operator.release

docs: venv
	$(PY) -m reasoning_trainer.schema.reference > docs/configuration.md

generate: crd dashboard manifests docs

# Both images, where a Docker engine runs. IMAGE_REGISTRY=... VERSION=... to retag.
IMAGE_REGISTRY ?= ghcr.io/reasoning-operator
VERSION ?= $(shell sed -n 's/^version = "\(.*\)"/\1/p' pyproject.toml)
images:
	@docker info >/dev/null 2>&1 || { echo "make images needs a running Docker engine (docker info failed)"; exit 1; }
	docker build -f images/operator/Dockerfile -t $(IMAGE_REGISTRY)/operator:$(VERSION) .
	docker build -f images/trainer/Dockerfile -t $(IMAGE_REGISTRY)/trainer:$(VERSION) .

clean:
	rm -rf $(VENV) outputs .pytest_cache
