# The two commands a newcomer needs:
#   make run    - a real self-rewarding run (M0 -> M1 -> M2 -> M3) with SmolLM2-135M on this machine
#   make test   - the test suite against a real Kafka broker, the real model and the real helm
SHELL := /bin/bash
CACHE ?= $(HOME)/.cache/srlm
VENV ?= $(CACHE)/venv
CONFIG ?= configs/tiny.yaml
PYTEST_ARGS ?=

EVAL_CONFIG ?= configs/small.yaml
RUN ?= latest

.PHONY: install install-test test run curve eval protos bench

install:
	deploy/bootstrap.sh

install-test:
	deploy/bootstrap.sh --test

test: install-test
	$(VENV)/bin/python -m pytest $(PYTEST_ARGS)

run: install
	$(VENV)/bin/srlm run --up --config $(CONFIG)

# the measured curve: configs/small.yaml (M0 -> M3, 67 min of run time on a 2-core CPU in fp32), then its table
curve: install
	$(VENV)/bin/srlm run --up --config $(EVAL_CONFIG)

# the evaluation suite's table (95% intervals, paired tests vs each parent) for every version of a run
eval: install
	$(VENV)/bin/srlm eval --config $(EVAL_CONFIG) --run $(RUN)

protos: install
	$(VENV)/bin/python protos/generate.py

bench: install
	$(VENV)/bin/python bench/bus.py
