# Moorage: `make run` starts the daemon and shows it, `make test` runs lint, types and the whole test suite.
VENV ?= .venv
PY := $(VENV)/bin/python
BIN := $(VENV)/bin
GEN := src/moorage/cri/_gen

.PHONY: deps run stop test lint typecheck pytest test-cgroupv2 test-cgroupv2-systemd deb test-deb critest cri-tools clientgo kubelet test-kubelet protos docs bench pause clean

deps: $(VENV)/.installed build/pause/pause build/pinns/pinns

$(VENV)/.installed: pyproject.toml scripts/debian-packages.txt scripts/install-deps
	VENV=$(VENV) scripts/install-deps
	touch $@

## The main job: start the daemon on the default socket and show `moorage info`.
run: deps
	scripts/quickstart

stop:
	scripts/quickstart --stop

## Everything CI checks: lint, types, tests. pytest's exit 5 (no test ran) fails too.
test: deps cri-tools clientgo lint typecheck pytest

lint:
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench

typecheck:
	$(BIN)/mypy

pytest:
	$(BIN)/pytest -q $(PYTEST_ARGS)

## The cgroup-sensitive tests (pytest -m cgroup, plus PYTEST_ARGS) inside a pure cgroup v2 guest: ~2-3 minutes.
test-cgroupv2: deps
	VENV=$(VENV) MOORAGE_VM_CRITEST=AppArmor scripts/test-cgroupv2 $(PYTEST_ARGS)

## The same, with systemd as PID 1 of a namespace in the guest and the daemons on the systemd driver: ~3 minutes.
test-cgroupv2-systemd: deps
	VENV=$(VENV) MOORAGE_VM_SYSTEMD=1 scripts/test-cgroupv2 $(PYTEST_ARGS)

## The Debian package (scripts/build-deb): build/deb/moorage_<version>_amd64.deb, ~15 s.
deb: deps
	VENV=$(VENV) scripts/build-deb

## The package installed, started, restarted and removed under systemd in the cgroup v2 guest
## (tests/package/test_deb_guest.py): 2-4 minutes.
test-deb: deb cri-tools
	VENV=$(VENV) MOORAGE_VM_SYSTEMD=1 scripts/test-cgroupv2 -m integration tests/package/test_deb_guest.py $(PYTEST_ARGS)

## tests/clientgo: client-go's streaming clients (exec, attach, port-forward over SPDY and WebSocket) for the tests.
clientgo:
	scripts/build-clientgo

## crictl, critest and ginkgo of cri-tools $(CRI_TOOLS_VERSION), built from the Go module proxy into build/cri-tools.
CRI_TOOLS_VERSION ?= v1.37.0
cri-tools: build/cri-tools/.version

build/cri-tools/.version: scripts/build-cri-tools
	CRI_TOOLS_VERSION=$(CRI_TOOLS_VERSION) scripts/build-cri-tools

## The CRI validation suite against a fresh daemon, in a network namespace of its own: serially, with two ginkgo
## nodes, and on the crun handler. CRITEST_ARGS go to each run (e.g. --focus 'execSync').
critest: deps cri-tools
	$(PY) -m tests.critest.run $(CRITEST_ARGS)
	$(PY) -m tests.critest.run --parallel 2 $(CRITEST_ARGS)
	$(PY) -m tests.critest.run --handler crun $(CRITEST_ARGS)

## The kubelet of Kubernetes $(KUBERNETES_VERSION), built from the Go module proxy into build/kubelet.
KUBERNETES_VERSION ?= v1.37.2
kubelet: build/kubelet/.version

build/kubelet/.version: scripts/build-kubelet
	KUBERNETES_VERSION=$(KUBERNETES_VERSION) scripts/build-kubelet

## A real kubelet in standalone mode (static pods) on a fresh daemon, in a network namespace of its own.
test-kubelet: deps kubelet cri-tools
	$(PY) -m tests.kubelet.run $(PYTEST_ARGS)

## Regenerate the Python stubs of proto/runtime/v1/api.proto into src/moorage/cri/_gen (committed).
protos: deps
	rm -rf $(GEN)/runtime
	mkdir -p $(GEN)/runtime/v1
	PATH=$(BIN):$$PATH $(PY) -m grpc_tools.protoc -Iproto \
	    --python_out=$(GEN) --grpc_python_out=$(GEN) --mypy_out=$(GEN) --mypy_grpc_out=$(GEN) \
	    proto/runtime/v1/api.proto
	touch $(GEN)/runtime/__init__.py $(GEN)/runtime/v1/__init__.py
	sed -i -e 's/^from runtime\.v1 import/from moorage.cri._gen.runtime.v1 import/' \
	    -e 's/\bruntime\.v1\.api_pb2\b/moorage.cri._gen.runtime.v1.api_pb2/g' \
	    $(GEN)/runtime/v1/api_pb2_grpc.py $(GEN)/runtime/v1/api_pb2_grpc.pyi

## Rewrite the README's configuration reference from the config declarations.
docs: deps
	$(PY) scripts/update-readme-config

bench: deps
	PYTHONPATH=. $(PY) bench/startup.py
	PYTHONPATH=. $(PY) bench/unpack.py
	PYTHONPATH=. $(PY) bench/pull.py
	PYTHONPATH=. $(PY) bench/pods.py
	PYTHONPATH=. $(PY) bench/exec.py
	PYTHONPATH=. $(PY) bench/readpath.py --pods 110 250
	PYTHONPATH=. $(PY) bench/churn.py --minutes 10 --rate 5
	$(MAKE) cri-tools
	$(PY) -m tests.critest.run --benchmark --keep build/critest-bench

pause: build/pause/pause

build/pause/pause: src/moorage/runtime/pause/pause.c scripts/build-static
	scripts/build-static $< $@

build/pinns/pinns: src/moorage/node/pinns/pinns.c scripts/build-static
	scripts/build-static $< $@

clean:
	rm -rf $(VENV) build src/*.egg-info .mypy_cache .pytest_cache .ruff_cache
