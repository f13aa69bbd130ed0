# TaskHub: `make run` on a machine with only Python 3.11 (see docs/running.md).
# Environment: DATABASE_URL + REDIS_URL (both set: use them, start nothing embedded),
# HOST/PORT (web, 127.0.0.1:8000), WORKER_CONCURRENCY, GRPC_PORT, PYTEST_ARGS and TEST_WORKERS (make test).

PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=
# pytest-xdist workers for `make test` (devserver/pytest_workers.py); 0 runs the suite in one
# process (for --pdb). Files are the unit of distribution: a file's module fixtures start once.
TEST_WORKERS ?= 2

.DEFAULT_GOAL := help
.PHONY: help venv run test services lint fmt bench reliability mutation proto clean

help:
	@echo "make run       start everything (embedded PostgreSQL + Valkey unless DATABASE_URL and REDIS_URL are set)"
	@echo "make test      run the tests (PYTEST_ARGS='-k lifecycle -x' to pass pytest arguments)"
	@echo "make services  only the embedded PostgreSQL + Valkey, in the foreground"
	@echo "make lint | fmt | bench | reliability | mutation | proto | venv | clean"

# Development installs both files (requirements-dev.txt includes requirements.txt; the
# Docker image installs requirements.txt only). Re-installs when either is newer than the
# stamp; creates .venv when missing. PYTHON=/path/to/python3.11 if it is not on PATH under that name.
$(STAMP): requirements.txt requirements-dev.txt
	@test -x $(PY) || { echo "creating $(VENV) with $(PYTHON)"; $(PYTHON) -m venv $(VENV); }
	@echo "installing requirements-dev.txt into $(VENV) (the first time takes a few minutes)"
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements-dev.txt
	@touch $(STAMP)

venv: $(STAMP)

run: $(STAMP)
	$(PY) -m devserver.launcher run

test: $(STAMP)
	$(PY) -m devserver.launcher test -n $(TEST_WORKERS) --dist loadfile $(PYTEST_ARGS)

services: $(STAMP)
	$(PY) -m devserver.launcher services

lint: $(STAMP)
	$(VENV)/bin/ruff check . && $(VENV)/bin/ruff format --check .

fmt: $(STAMP)
	$(VENV)/bin/ruff format . && $(VENV)/bin/ruff check --fix .

# The same backing-service rule as `make test` (embedded unless DATABASE_URL + REDIS_URL).
# Quick by default (under ~3 min); BENCH_ARGS="--scale" for the big comparisons against
# the references (under 15 min); docs/benchmarks.md. Needs `wrk` (Debian: apt-get install wrk).
bench: $(STAMP)
	$(PY) -m devserver.launcher exec $(PY) bench/run.py $(BENCH_ARGS)

# The fault and abuse scenarios of docs/reliability.md against real processes, on a test
# database of their own; prints a table and writes the doc's measured column. 45-75
# minutes in all (S4's 1,000 schemathesis examples per operation 20-40); RELIABILITY_ARGS="--quick"
# for CI's smaller form, "--only R1,S1" for some. The same backing-service rule as
# `make test` and `make bench`.
RELIABILITY_ARGS ?=
reliability: $(STAMP)
	$(PY) -m devserver.launcher exec nice $(PY) -m reliability.run $(RELIABILITY_ARGS)

# Mutation testing of tasks/models.py, tasks/services.py, notifications/services.py
# (docs/mutation.md; configured in pyproject.toml's [tool.mutmut]). Not part of `make test`
# or CI. Bounded: stops after MUTATION_MINUTES (50); mutmut keeps each verdict in mutants/,
# so running it again goes on with the mutants not yet tried (`rm -rf mutants` starts over).
# One child: the tests share one test database. The same backing services as `make test`.
MUTATION_MINUTES ?= 50
mutation: $(STAMP)
	-$(PY) -m devserver.launcher exec timeout --signal=INT $(MUTATION_MINUTES)m \
		nice -n 19 $(VENV)/bin/mutmut run --max-children 1
	$(VENV)/bin/mutmut results --all true

# As in docs/grpc.md: protoc writes `import taskhub_pb2`; inside the package it must be relative.
proto: $(STAMP)
	$(PY) -m grpc_tools.protoc -I proto --python_out=tasks/grpc/gen \
		--grpc_python_out=tasks/grpc/gen --pyi_out=tasks/grpc/gen proto/taskhub.proto
	sed -i.bak 's/^import taskhub_pb2 as taskhub__pb2$$/from . import taskhub_pb2 as taskhub__pb2/' \
		tasks/grpc/gen/taskhub_pb2_grpc.py && rm tasks/grpc/gen/taskhub_pb2_grpc.py.bak

# Keeps .venv. Refuses while a launcher holds .data (its servers would run on deleted files).
clean:
	@for lock in .data/launcher.lock .data/test/launcher.lock; do \
		if [ -f $$lock ] && command -v flock >/dev/null 2>&1 && ! flock -n $$lock true; then \
			echo "a launcher (pid $$(cat $$lock)) is using $$(dirname $$lock); stop it first" >&2; \
			exit 1; fi; done
	rm -rf .data staticfiles .pytest_cache .ruff_cache
	find . -path ./$(VENV) -prune -o -name __pycache__ -type d -prune -exec rm -rf {} +
