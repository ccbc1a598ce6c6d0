# Two commands do all the set-up on a fresh machine: `make serve` and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.installed
# torch is chosen first so nothing else can pull another build. With no NVIDIA driver we take the
# CPU build of TORCH_VERSION; set TORCH_INDEX (e.g. https://download.pytorch.org/whl/cpu) to pick an index.
TORCH_VERSION ?= 2.13.0
TORCH_INDEX ?=
HAS_CUDA := $(shell command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1 && echo 1)
PORT ?= 3000

.PHONY: install serve serve-optimizer serve-api test test-servers bench eval load build import-model lint clean

install: $(STAMP)

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install --upgrade --quiet pip
	$(PIP) install --quiet "torch==$(TORCH_VERSION)" $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX))
ifneq ($(HAS_CUDA),1)
	$(PY) -c "import torch, sys; sys.exit(0 if torch.version.cuda is None else 'a CUDA torch was installed on a machine without a GPU; set TORCH_INDEX to a CPU index')"
endif
	$(PY) -c "import torch; print('torch==' + torch.__version__)" > $(VENV)/constraints.txt
	$(PIP) install --quiet --no-deps "cn_clip==1.6.0"
	$(PIP) install --quiet -c $(VENV)/constraints.txt -e ".[dev]"
	$(PY) -c "import clipdlut.compat as c; c.import_cn_clip(); import torch; print('clipdlut ready, torch', torch.__version__)"
	touch $(STAMP)

serve: install
	$(VENV)/bin/bentoml serve service:Retouch --port $(PORT)

# Split deployment (README, Scaling out): the optimizer alone on a GPU host, the API pointed at it.
serve-optimizer: install
	$(VENV)/bin/bentoml serve service:Optimizer --port $(PORT)

serve-api: install   # OPTIMIZER_URL=http://gpu-host:3000
	CLIPDLUT_OPTIMIZER_URL=$(OPTIMIZER_URL) $(VENV)/bin/bentoml serve service:Retouch --port $(PORT)

test: install test-servers
	$(PY) -m pytest -q

# Real servers some tests drive, from Debian's packages: chromium (the browser test), haproxy (the router in
# front of replicas) and redis-server (the shared job store). Installed where apt can be used (root or
# password-less sudo); elsewhere those tests skip and say why.
SUDO := $(if $(filter 0,$(shell id -u)),,sudo -n)
APT_GET := $(SUDO) apt-get install -y -q --no-install-recommends chromium chromium-driver fonts-wqy-microhei haproxy \
	redis-server >/dev/null 2>&1
test-servers:
	@command -v chromium >/dev/null && command -v chromedriver >/dev/null && command -v haproxy >/dev/null && \
	command -v redis-server >/dev/null || \
	$(APT_GET) || { $(SUDO) apt-get update -q >/dev/null 2>&1 && $(APT_GET); } || \
	echo "chromium, haproxy or redis-server could not be installed with apt: the tests that need them will skip"

# The quality report (README, Evaluation): EVAL_ARGS="--model ViT-B-16 --steps 200" with downloaded weights.
eval: install
	$(PY) -m clipdlut eval $(EVAL_ARGS)

bench: install   # BENCH_ARGS="--device cuda" on a GPU machine
	$(PY) -m bench $(BENCH_ARGS)

load: install
	$(VENV)/bin/locust -f locustfile.py --headless -u 8 -r 2 -t 60s --host http://127.0.0.1:$(PORT)

import-model: install   # MODEL=ViT-B-16 [FROM=clip_cn_vit-b-16.pt]: weights into BentoML's model store
	$(PY) -m clipdlut import-model $(or $(MODEL),ViT-B-16) $(if $(FROM),--from $(FROM))

build: install
	$(VENV)/bin/bentoml build
	@echo "Dockerfile: $$($(VENV)/bin/bentoml get clipdlut:latest -o path)/env/docker/Dockerfile"

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .mypy_cache
