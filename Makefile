# The README's commands.  Everything goes into a virtual environment in .venv.
PYTHON ?= python3
VENV ?= .venv
CONFIG ?= dev/patch.toml
ABS_VENV := $(abspath $(VENV))

PYPY ?= pypy3
PYPY_VENV ?= .venv-pypy
TEST_JOBS ?= 2
ABS_PYPY_VENV := $(abspath $(PYPY_VENV))

.PHONY: protos run test install install-test system-deps js-deps go-deps bench bench-js bench-test clean run-pypy test-pypy install-pypy install-pypy-test

# Set up and run the service on dev/patch.toml (port 4222).
run: install
	$(ABS_VENV)/bin/twistd -n --pidfile= eventsvc --config $(CONFIG)

# Set up and run the whole test suite against the installed package, then mypy.
# Two trial workers: half the suite waits on processes, sockets and timers, not the CPU
# (1,445 tests: CPython 285 s with -j2, against 602 s in one; PyPy 371 s, against 793 s).
# TEST_JOBS=1 make test runs them one at a time.
test: install-test system-deps js-deps go-deps
	cd "$$(mktemp -d)" && EVENTSVC_SOURCE=$(CURDIR) $(ABS_VENV)/bin/trial -j$(TEST_JOBS) eventsvc
	$(ABS_VENV)/bin/mypy --config-file setup.cfg eventsvc

# The same on PyPy (Debian's pypy3 and pypy3-venv), with constraints-pypy.txt.
# PyPy's own GC settings (fastest); PYPY_GC_MAJOR_COLLECT=1.2 make run-pypy for a
# tighter heap at a cost in throughput (docs/operations.md).
run-pypy: install-pypy
	$(ABS_PYPY_VENV)/bin/twistd -n --pidfile= eventsvc --config $(CONFIG)

test-pypy: install-pypy-test system-deps js-deps go-deps
	cd "$$(mktemp -d)" && EVENTSVC_SOURCE=$(CURDIR) $(ABS_PYPY_VENV)/bin/trial -j$(TEST_JOBS) eventsvc

$(PYPY_VENV)/bin/pip:
	@command -v $(PYPY) >/dev/null || { \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq pypy3 pypy3-venv; \
	  else echo "pypy3 is missing: sudo apt-get install pypy3 pypy3-venv"; exit 1; fi; }
	$(PYPY) -m venv $(PYPY_VENV)

install-pypy: $(PYPY_VENV)/bin/pip
	rm -rf build
	$(PYPY_VENV)/bin/pip install -q -c constraints-pypy.txt .

install-pypy-test: $(PYPY_VENV)/bin/pip
	rm -rf build
	$(PYPY_VENV)/bin/pip install -q -c constraints-pypy.txt ".[test]"

$(VENV)/bin/pip:
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip

# A normal (not editable) install: twistd finds the plugin only this way.
# setuptools builds in ./build and reuses what it finds there: a module
# removed from the tree (test_gateway.py, renamed) would be installed again.
install: $(VENV)/bin/pip
	rm -rf build
	$(VENV)/bin/pip install -q .

install-test: $(VENV)/bin/pip
	rm -rf build
	$(VENV)/bin/pip install -q ".[test,typecheck]"

# nats-server (the reference server) for the interop tests, systemd-analyze (to
# check dist/eventsvc.service) and Chromium (the console's browser test), from Debian.
system-deps:
	@command -v nats-server >/dev/null && command -v systemd-analyze >/dev/null && command -v chromium >/dev/null || { \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nats-server systemd chromium; \
	  else echo "nats-server, systemd or chromium is missing: sudo apt-get install nats-server systemd chromium (those tests will be skipped)"; fi; }

# nats.go's JetStream scenes (eventsvc/test/test_interop_jetstream.py), built from
# Debian's golang-github-nats-io-go-nats-dev 1.22.1 sources (no module proxy).
go-deps: interop/go/jsinterop

interop/go/jsinterop: interop/go/jsinterop.go interop/go/objinterop.go
	@command -v go >/dev/null && [ -d /usr/share/gocode/src/github.com/nats-io/nats.go ] || { \
	  echo "go or nats.go is missing: apt-get install golang-go golang-github-nats-io-go-nats-dev (the nats.go interop tests will be skipped)"; exit 0; }; \
	  interop/go/build

# nats.js for the WebSocket and JetStream interop tests (interop/js/package-lock.json), with Node's npm.
js-deps: interop/js/node_modules/.package-lock.json

interop/js/node_modules/.package-lock.json: interop/js/package-lock.json
	@command -v npm >/dev/null || { echo "npm is missing: apt-get install nodejs npm (the nats.js interop tests will be skipped)"; exit 0; }; \
	  npm ci --prefix interop/js --no-audit --no-fund --loglevel=error

# Side-by-side benchmark against nats-server, eventsvc on CPython and PyPy (not part of the tests);
# it flags every scene below issue 30's goals: bench/run.py's, then JetStream's (bench/jetstream.py,
# also alone as bench-js).  BENCH_ARGS="--quick --runs 2" for a short run.py, JS_BENCH_ARGS for
# jetstream.py (e.g. "--messages 200000", as docs/performance.md's JetStream tables ran it).
bench: install install-pypy system-deps
	$(ABS_VENV)/bin/python bench/run.py --pypy $(ABS_PYPY_VENV)/bin/python $(BENCH_ARGS)
	$(JS_BENCH)

bench-js: install install-pypy system-deps
	$(JS_BENCH)

# bench/'s own checks, apart from the suite: the order bench/run.py runs a scene's servers in,
# on fake servers (nothing is started or measured).
bench-test: install-test
	cd "$$(mktemp -d)" && $(ABS_VENV)/bin/trial $(CURDIR)/bench/test_run.py

JS_BENCH = $(ABS_VENV)/bin/python bench/jetstream.py --interpreters $(ABS_VENV)/bin/python $(ABS_PYPY_VENV)/bin/python $(JS_BENCH_ARGS)

clean:
	rm -rf $(VENV) $(PYPY_VENV) build *.egg-info interop/js/node_modules interop/go/jsinterop

# Regenerate eventsvc/grpc/generated/ from eventsvc/grpc/protos/ (Automate's protos, copied).
# The generated modules are committed, so users need no protoc; never edit them by hand.
# The protos import each other as eventsvc/grpc/generated/<name>.proto (the -I mapping below),
# so the generated code imports eventsvc.grpc.generated.<name>_pb2.  grpcio-tools 1.75 writes
# protobuf 6.31 gencode, which the newest protobuf PyPy 3.9 can install (6.33) still runs.
PROTOS := $(wildcard eventsvc/grpc/protos/*.proto)
protos: $(VENV)/bin/pip
	$(VENV)/bin/pip install -q ".[protos]"
	rm -f eventsvc/grpc/generated/*_pb2*.py eventsvc/grpc/generated/*_pb2.pyi
	$(ABS_VENV)/bin/python -m grpc_tools.protoc -Ieventsvc/grpc/generated=eventsvc/grpc/protos \
	  --python_out=. --pyi_out=. --grpc_python_out=. $(patsubst eventsvc/grpc/protos/%,eventsvc/grpc/generated/%,$(PROTOS))
