# skinspark: the two commands a new user needs are `make demo` and `make test`; both run setup first.
SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.skinspark-installed
# One source of truth for versions: read a pin out of pyproject.toml's dependencies.
pin = $(shell $(PYTHON) -c 'import sys,tomllib; d=tomllib.load(open("pyproject.toml","rb"))["project"]["dependencies"]; print(next(x for x in d if x.split("=")[0].split("<")[0].split(">")[0]==sys.argv[1]))' $(1))
HOROVOD_ENV := HOROVOD_WITH_TENSORFLOW=1 HOROVOD_WITH_GLOO=1 HOROVOD_WITHOUT_MPI=1 \
	HOROVOD_WITHOUT_PYTORCH=1 HOROVOD_WITHOUT_MXNET=1
DEMO_DIR ?= demo-output
PYTEST_ARGS ?=

.PHONY: setup check-tools demo test test-all test-cluster lint clean

setup: $(STAMP)

check-tools:
	@command -v $(PYTHON) >/dev/null || { echo "setup: $(PYTHON) not found; install Python 3.11 or run make PYTHON=/path/to/python3.11"; exit 1; }
	@command -v java >/dev/null || { echo "setup: java not found; install Java 17 (e.g. apt-get install openjdk-17-jdk-headless)"; exit 1; }
	@java -version 2>&1 | head -1 | grep -q '"17' || { echo "setup: Java 17 is required, found: $$(java -version 2>&1 | head -1)"; exit 1; }
	@command -v c++ >/dev/null || command -v g++ >/dev/null || { echo "setup: no C++ compiler found (Horovod builds from source); install g++"; exit 1; }

# Order matters: TensorFlow first, then Horovod built against it without build isolation, then the
# package (pip then finds Horovod already satisfied). pip caches the built Horovod wheel, so a later
# setup in a fresh clone on the same machine skips the 8-minute compile.
$(STAMP): pyproject.toml | check-tools
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade "pip>=24" "setuptools>=77" wheel
	$(PY) -m pip install --quiet "$(call pin,tensorflow-cpu)" "$(call pin,numpy)"
	@command -v cmake >/dev/null || $(PY) -m pip install --quiet cmake
	@if ! $(PY) -c 'import horovod.tensorflow' 2>/dev/null; then \
		echo "setup: building Horovod against TensorFlow (about 8 minutes the first time)"; \
		PATH="$(CURDIR)/$(VENV)/bin:$$PATH" $(HOROVOD_ENV) $(PY) -m pip install --quiet --no-build-isolation \
			"$(call pin,horovod)" || exit 1; \
	fi
	$(PY) -m pip install --quiet -e ".[test,lint]"
	@TF_CPP_MIN_LOG_LEVEL=2 $(PY) -c 'import horovod.tensorflow, pyspark, petastorm, tensorflow as tf; print("setup: ok, tensorflow", tf.__version__, "pyspark", pyspark.__version__)'
	@touch $(STAMP)

demo: setup
	$(PY) -m skinspark.demo --output $(DEMO_DIR)

test: setup
	$(VENV)/bin/ruff check --quiet .
	$(PY) -m pytest $(PYTEST_ARGS)

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

clean:
	rm -rf $(DEMO_DIR) .pytest_cache build *.egg-info
