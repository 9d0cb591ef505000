# Entry points: `make demo` runs the demo, `make test` runs the test suite.
# Both install what they need first (system packages need root).

.PHONY: all deps demo test clean

all: test

deps:
	./scripts/install-deps.sh

demo: deps
	.venv/bin/python -m sim.demo

test: deps
	.venv/bin/python -m pytest

clean:
	rm -rf .venv .pytest_cache build *.egg-info
