# The front door: `make run` starts the daemon, `make test` runs the whole suite.
# Everything is installed by these targets on a fresh machine; re-runs are quick.

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install run test bench system runtimes launcher clean

install: system $(STAMP) runtimes launcher

# Debian packages: git and bubblewrap for the daemon; docker.io, chromium, nginx and
# wrk for the tests and the benchmark.
system:
	@bash scripts/setup-system.sh

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check -e '.[test,bench]'
	@touch $@

# Pinned Deno, Node (PyPI wheels) and Bun (npm registry) under .runtimes/.
runtimes: $(STAMP)
	@bash scripts/setup-runtimes.sh

# `tee-daemon` on the PATH: a link to the venv's console script in /usr/local/bin (root)
# or ~/.local/bin, so the README's commands work as written in a new shell.
launcher: $(STAMP)
	@bash scripts/install-launcher.sh

run: install
	$(VENV)/bin/tee-daemon serve

# The Docker tests run against a private dockerd with locally built base images (no
# registry here); building the base rootfs once, outside pytest, keeps tests short.
test: install
	$(PY) tests/docker_engine.py --prepare
	$(PY) -m pytest

bench: install
	$(PY) bench/run.py --density

clean:
	rm -rf $(VENV) .runtimes .pytest_cache
