# The two commands of the README:  `make demo` (install + run the whole chain on a
# synthetic corpus) and `make test` (install + run the test suite). CI runs `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
DEMO ?= demo
# One torch pin for the local install and the container images (infra/docker/Dockerfile).
TORCH_VERSION ?= 2.13.0
TORCH_CUDA_INDEX ?= https://download.pytorch.org/whl/cu128
TORCH_CPU_INDEX ?= https://download.pytorch.org/whl/cpu
SUDO ?= $(shell [ "$$(id -u)" = 0 ] || echo sudo)
IMAGE ?= lipsync
IMAGE_TAG ?= 0.1.0

.PHONY: install test demo bench clean images

# torch first, pinned, the CPU build: PyTorch's CPU index when it answers, else pip's configured
# index (infra/install_torch.py says which). An unpinned torch (asked for by any dependency)
# would pull a multi-GB CUDA build. Our own range admits 2.13.0.
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	$(PY) infra/install_torch.py $(TORCH_VERSION) --cpu-index $(TORCH_CPU_INDEX)
	$(PIP) install --quiet -e '.[dev]'
	@# The team-MLflow tests start a PostgreSQL server (Debian's package; CI runs as root).
	@ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || command -v initdb >/dev/null || \
		{ echo "installing PostgreSQL for the team MLflow server tests"; \
		  $(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq --no-install-recommends postgresql; }
	@# The service's web page is tested in a real headless browser (Debian's chromium + its driver).
	@command -v chromium >/dev/null && command -v chromedriver >/dev/null || \
		{ echo "installing chromium and chromedriver for the web page test"; \
		  $(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq --no-install-recommends chromium chromium-driver; }
	touch $@

install: $(VENV)/.installed

test: install
	$(PY) -m pytest -q --timeout=900 --durations=30 tests

demo: install
	$(PY) workflows/demo.py --workdir $(DEMO)

bench: install
	for b in benchmarks/*.py; do case $$b in *expert_curve.py) continue;; esac; echo "== $$b"; $(PY) $$b || exit 1; done

# The container images (infra/README.md): CPU (head, preprocessing), CUDA (training), MLflow server.
images:
	docker build -f infra/docker/Dockerfile --build-arg TORCH_VERSION=$(TORCH_VERSION) -t $(IMAGE):$(IMAGE_TAG)-cpu .
	docker build -f infra/docker/Dockerfile --build-arg TORCH_VERSION=$(TORCH_VERSION) \
		--build-arg TORCH_INDEX=$(TORCH_CUDA_INDEX) -t $(IMAGE):$(IMAGE_TAG)-cuda .
	docker build -f infra/docker/Dockerfile --build-arg TORCH_VERSION=$(TORCH_VERSION) --build-arg EXTRAS=server \
		-t $(IMAGE):$(IMAGE_TAG)-mlflow .

clean:
	rm -rf $(DEMO) mlruns.db mlartifacts
