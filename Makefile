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

.PHONY: install serve serve-optimizer serve-api test test-fast test-servers bench eval load build base-image container import-model lint clean

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

# The quick loop while changing code: the library and the in-process HTTP tests, no real server (under 4 minutes
# here). `make test` runs everything, and is what CI runs.
test-fast: install
	$(PY) -m pytest -q -m "not e2e and not container"

# Real servers some tests drive, from Debian's packages: chromium (the browser test), haproxy (the router in
# front of replicas), redis-server (the shared job store), and the container engine (podman with runc and catatonit,
# mmdebstrap for the base image). Installed where apt can be used (root or password-less sudo); elsewhere those
# tests skip and say why.
SUDO := $(if $(filter 0,$(shell id -u)),,sudo -n)
APT_GET := $(SUDO) apt-get install -y -q --no-install-recommends chromium chromium-driver fonts-wqy-microhei haproxy \
	redis-server podman runc catatonit mmdebstrap >/dev/null 2>&1
test-servers:
	@command -v chromium >/dev/null && command -v chromedriver >/dev/null && command -v haproxy >/dev/null && \
	command -v redis-server >/dev/null && command -v podman >/dev/null && command -v runc >/dev/null && \
	command -v mmdebstrap >/dev/null || \
	$(APT_GET) || { $(SUDO) apt-get update -q >/dev/null 2>&1 && $(APT_GET); } || \
	echo "chromium, haproxy, redis-server or podman could not be installed with apt: the tests that need them will skip"

# The quality report (README, Evaluation): EVAL_ARGS="--model ViT-B-16 --steps 200" with downloaded weights.
eval: install
	$(PY) -m clipdlut eval $(EVAL_ARGS)

bench: install   # BENCH_ARGS="--device cuda" on a GPU machine
	$(PY) -m bench $(BENCH_ARGS)

load: install
	$(VENV)/bin/locust -f locustfile.py --headless -u 8 -r 2 -t 60s --host http://127.0.0.1:$(PORT)

import-model: install   # MODEL=ViT-B-16 [FROM=clip_cn_vit-b-16.pt]: weights into BentoML's model store
	$(PY) -m clipdlut.serving.modelstore $(or $(MODEL),ViT-B-16) $(if $(FROM),--from $(FROM))

# The Bento as an OCI image (README, Deployment), as `bentoml containerize` builds it: VARIANT=gpu (torch's CUDA
# build) or cpu (torch's CPU build, downloaded here into wheels/ by this machine's pip: TORCH_INDEX as for install).
# The engine is Docker where one answers, else podman (Debian's package); podman's settings for hosts like the CI's
# are in deploy/container/containers.conf. The base image is made from Debian's packages when it is missing (no
# image registry needed); BASE_IMAGE names another (any image with the same packages).
VARIANT ?= gpu
IMAGE ?= clipdlut:$(VARIANT)
BASE_IMAGE ?= clipdlut-base:bookworm
CA_BUNDLE ?= /etc/ssl/certs/ca-certificates.crt
ifeq ($(origin ENGINE), undefined)
ENGINE := $(shell docker info >/dev/null 2>&1 && echo docker || echo podman)
endif
export CONTAINERS_CONF ?= $(CURDIR)/deploy/container/containers.conf
# (podman builds reach the package index through this machine's CA bundle, as a company proxy requires)
BUILD_OPTS := --network host $(if $(filter podman,$(ENGINE)),--opt volume=$(CA_BUNDLE):/etc/ssl/certs/ca-certificates.crt:ro)

build: install   # VARIANT=gpu|cpu: the image the Bento declares (see container)
	rm -rf wheels
	$(if $(filter cpu,$(VARIANT)),$(PIP) download --quiet --no-deps -d wheels "torch==$(TORCH_VERSION)" \
		$(if $(TORCH_INDEX),--index-url $(TORCH_INDEX)))
	CLIPDLUT_IMAGE_VARIANT=$(VARIANT) CLIPDLUT_BASE_IMAGE=$(BASE_IMAGE) $(VENV)/bin/bentoml build
	@echo "Dockerfile: $$($(VENV)/bin/bentoml get clipdlut:latest -o path)/env/docker/Dockerfile"

base-image:
	ENGINE=$(ENGINE) deploy/container/base-image.sh $(BASE_IMAGE)

container: build
	@$(ENGINE) image inspect $(BASE_IMAGE) >/dev/null 2>&1 || ENGINE=$(ENGINE) deploy/container/base-image.sh $(BASE_IMAGE)
	$(VENV)/bin/bentoml containerize clipdlut:latest --backend $(ENGINE) -t $(IMAGE) $(BUILD_OPTS)

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .mypy_cache wheels
