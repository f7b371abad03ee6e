# skinspark: the two commands a new user needs are `make demo` and `make test`; both run setup first.
SHELL := /bin/bash
PYTHON ?= python3.11
# STACK=pinned (default): TensorFlow 2.15, Spark 3.5, Horovod and Petastorm, in .venv. STACK=modern: Spark 4,
# a current TensorFlow with tf-keras, NumPy 2, no Horovod or Petastorm (pyproject.toml's
# [tool.skinspark.stacks]), in .venv-modern; training uses the tf_distribute backend there.
STACK ?= pinned
ifeq ($(STACK),pinned)
VENV ?= .venv
else
VENV ?= .venv-$(STACK)
endif
PY := $(VENV)/bin/python
STACK_STAMP := $(VENV)/.skinspark-stack
STAMP := $(VENV)/.skinspark-installed
# How the project goes on top of the stack: editable with the dev extras in a checkout; the Docker
# image and `make pack` install it as a plain package (PROJECT_INSTALL=.).
PROJECT_INSTALL ?= -e .[test,lint,cluster,tracking,dicom]
# One source of truth for versions: read a pin out of pyproject.toml's dependencies.
pin = $(shell $(PYTHON) -c 'import sys,tomllib; d=tomllib.load(open("pyproject.toml","rb"))["project"]["dependencies"]; print(next(x for x in d if x.split("=")[0].split("<")[0].split(">")[0]==sys.argv[1]))' $(1))
# Every dependency of pyproject.toml, shell-quoted (a `<` must not become a redirection); $(call
# requirements,NAME): the list of another stack ([tool.skinspark.stacks]) or of an extra.
dependencies = $(shell $(PYTHON) -c 'import shlex,tomllib; print(" ".join(shlex.quote(x) for x in tomllib.load(open("pyproject.toml","rb"))["project"]["dependencies"]))')
requirements = $(shell $(PYTHON) -c 'import shlex,sys,tomllib; p=tomllib.load(open("pyproject.toml","rb")); d=p["tool"]["skinspark"]["stacks"].get(sys.argv[1]) or sum((p["project"]["optional-dependencies"][x] for x in sys.argv[1].split("+")), []); print(" ".join(shlex.quote(x) for x in d))' $(1))
HOROVOD_ENV := HOROVOD_WITH_TENSORFLOW=1 HOROVOD_WITH_GLOO=1 HOROVOD_WITHOUT_MPI=1 \
	HOROVOD_WITHOUT_PYTORCH=1 HOROVOD_WITHOUT_MXNET=1
DEMO_DIR ?= demo-output
PYTEST_ARGS ?=
# `make pack`: a second, non-editable environment built by the same rules, packed with venv-pack.
PACK_VENV := build/pack-venv
PACK := dist/skinspark-env.tar.gz
# venv-pack does not copy the interpreter: the pack's bin/python links to the Python 3.11 that built it.
# PACK_ARGS="--python-prefix /usr/local" points it at another prefix's bin/python3.11 on the nodes.
PACK_ARGS ?=
CLUSTER_DIR ?= cluster-output

.PHONY: setup stack check-tools demo test test-all test-cluster lint clean pack cluster-demo

setup: $(STAMP)

stack: $(STACK_STAMP)

check-tools:
	@command -v $(PYTHON) >/dev/null || { echo "setup: $(PYTHON) not found; install Python 3.11 or run make PYTHON=/path/to/python3.11"; exit 1; }
	@command -v java >/dev/null || { echo "setup: java not found; install Java 17 (e.g. apt-get install openjdk-17-jdk-headless)"; exit 1; }
	@java -version 2>&1 | head -1 | grep -q '"17' || { echo "setup: Java 17 is required, found: $$(java -version 2>&1 | head -1)"; exit 1; }
	@command -v c++ >/dev/null || command -v g++ >/dev/null || { echo "setup: no C++ compiler found (Horovod builds from source); install g++"; exit 1; }

# The stack, which needs only pyproject.toml (the Docker image caches it as one layer). Order matters:
# TensorFlow first, then Horovod built against it without build isolation, then the other pins (pip
# then finds Horovod already satisfied). pip caches the built Horovod wheel, so a later setup in a
# fresh clone on the same machine skips the 8-minute compile.
ifeq ($(STACK),pinned)
$(STACK_STAMP): pyproject.toml | check-tools
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade "pip>=24" "setuptools>=77" wheel
	$(PY) -m pip install --quiet "$(call pin,tensorflow-cpu)" "$(call pin,numpy)"
	@command -v cmake >/dev/null || $(PY) -m pip install --quiet cmake
	@if ! $(PY) -c 'import horovod.tensorflow' 2>/dev/null; then \
		echo "setup: building Horovod against TensorFlow (about 8 minutes the first time)"; \
		PATH="$(abspath $(VENV))/bin:$$PATH" $(HOROVOD_ENV) $(PY) -m pip install --quiet --no-build-isolation \
			"$(call pin,horovod)" || exit 1; \
	fi
	$(PY) -m pip install --quiet $(dependencies)
	@touch $(STACK_STAMP)

# The package itself on top of the stack.
$(STAMP): $(STACK_STAMP) pyproject.toml
	$(PY) -m pip install --quiet $(PROJECT_INSTALL)
	@TF_CPP_MIN_LOG_LEVEL=2 $(PY) -c 'import horovod.tensorflow, pyspark, petastorm, tensorflow as tf; print("setup: ok, tensorflow", tf.__version__, "pyspark", pyspark.__version__)'
	@touch $(STAMP)
else
# Another stack: exactly its list, then the package without its (pinned) dependencies, and the dev extras.
$(STACK_STAMP): pyproject.toml | check-tools
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade "pip>=24" "setuptools>=77" wheel
	$(PY) -m pip install --quiet $(call requirements,$(STACK))
	@touch $(STACK_STAMP)

# The stack's list goes into the extras' install again so that pip resolves them together: an extra that
# wants a newer protobuf or NumPy then fails here instead of upgrading the stack's package behind its back.
$(STAMP): $(STACK_STAMP) pyproject.toml
	$(PY) -m pip install --quiet $(call requirements,$(STACK)) $(call requirements,test+lint+cluster+tracking+dicom)
	$(PY) -m pip install --quiet --no-deps $(PROJECT_INSTALL:[test,lint,cluster,tracking,dicom]=)
	@TF_CPP_MIN_LOG_LEVEL=2 $(PY) -c 'import skinspark, pyspark, tensorflow as tf; print("setup: ok ($(STACK) stack), tensorflow", tf.__version__, "tf-keras", __import__("tf_keras").__version__, "pyspark", pyspark.__version__)'
	@touch $(STAMP)
endif

demo: setup
	$(PY) -m skinspark.tools.demo --output $(DEMO_DIR)

# `make test`: ruff, then every test but those marked `cluster`, which start multi-process Spark masters
# (local-cluster, a standalone master and workers) and kill executors: `make test-cluster` runs those
# (a few minutes), `make test-all` both. PYTEST_ARGS go to pytest after the marker selection.
test: setup
	$(VENV)/bin/ruff check --quiet .
	$(PY) -m pytest -m "not cluster" $(PYTEST_ARGS)

test-cluster: setup
	$(PY) -m pytest -m cluster $(PYTEST_ARGS)

test-all: test test-cluster

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

# A relocatable copy of the environment for a cluster's executors (spark-submit --archives
# dist/skinspark-env.tar.gz#environment). venv-pack refuses editable installs, and the checkout's
# .venv has one, so the pack is a second environment built by the rules above with the package
# installed as a plain wheel; the package is reinstalled on every pack so it carries the current code.
pack: setup
	$(MAKE) --no-print-directory setup VENV=$(PACK_VENV) PROJECT_INSTALL=.
	$(PACK_VENV)/bin/python -m pip install --quiet --no-deps --force-reinstall .
	@mkdir -p $(dir $(PACK))
	$(VENV)/bin/venv-pack --quiet --prefix $(PACK_VENV) --output $(PACK) --force $(PACK_ARGS)
	@chmod 644 $(PACK)
	@ls -lh $(PACK)

# Spark's own standalone master and two workers on 127.0.0.1, then ingest, train and score on them.
# `make cluster-demo CLUSTER_ARGS=--env-archive=dist/skinspark-env.tar.gz` ships the packed environment.
cluster-demo: setup
	$(PY) -m skinspark.tools.cluster demo --workers 2 --output $(CLUSTER_DIR) $(CLUSTER_ARGS)

clean:
	rm -rf $(DEMO_DIR) $(CLUSTER_DIR) .pytest_cache build dist *.egg-info
