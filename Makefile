# Set-up, tests, demo and benchmarks. `make test` and `make demo` work on a fresh machine.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# one BLAS/torch thread per pytest worker: two workers on two cores
export OMP_NUM_THREADS ?= 1

.PHONY: setup test demo tutorial bench lint clean docs docs-serve docs-check browser

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# the pinned CPU build first, so nothing below pulls a CUDA build of torch
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

test: setup
	$(PY) -m pytest -q -n 2 --durations=15 tests --ignore=tests/browser

# the documentation site: built into site/ from the repository alone (MkDocs, the docs extra)
DOCS_STAMP := $(VENV)/.docs-installed
$(DOCS_STAMP): $(STAMP) pyproject.toml
	$(PY) -m pip install --quiet -e '.[dev,docs]'
	touch $(DOCS_STAMP)

docs: $(DOCS_STAMP)
	NO_MKDOCS_2_WARNING=1 $(PY) -m zoo.site build

docs-serve: $(DOCS_STAMP)
	NO_MKDOCS_2_WARNING=1 $(PY) -m zoo.site serve

# a headless Chromium and its driver from Debian (never a browser download at run time)
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
browser:
	@command -v chromium >/dev/null && command -v chromedriver >/dev/null || { \
		$(SUDO) apt-get update -q && \
		DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -q chromium chromium-driver; }

# the built site in a real browser: cards, images, links, figures, search, no JS errors;
# screenshots in build/screenshots/; and the assembled site's sources (tests/test_site.py,
# which `make test` skips without the docs extra)
docs-check: docs browser
	$(PY) -m pytest -q -p no:xdist tests/browser tests/test_site.py

demo: setup
	$(VENV)/bin/zoo train vae_digits  # a new run folder runs/vae_digits-<date>-<time> each time

# one tutorial, executed into runs/tutorials/NAME.ipynb (the committed notebook keeps its
# full-run outputs): `make tutorial NAME=eight_schools` in smoke mode (tiny step counts),
# SMOKE=0 for the full run. The inline backend keeps every figure in the stored outputs (under
# Agg, plt.show() draws nothing into the notebook).
tutorial: setup
	@test -n "$(NAME)" || { echo "usage: make tutorial NAME=eight_schools [SMOKE=0]"; exit 2; }
	@test -f tutorials/$(NAME).ipynb || { echo "no tutorial tutorials/$(NAME).ipynb"; exit 2; }
	mkdir -p runs/tutorials
	ZOO_SMOKE=$(if $(filter 0,$(SMOKE)),,1) MPLBACKEND=module://matplotlib_inline.backend_inline \
		$(VENV)/bin/jupyter execute \
		tutorials/$(NAME).ipynb --output=../runs/tutorials/$(NAME)

bench: setup
	# NumPyro and JAX only for the comparison rows (an optional extra, never a runtime need)
	$(PY) -m pip install --quiet -e '.[dev,bench]'
	$(PY) -m benchmarks

lint: setup
	$(VENV)/bin/ruff check zoo guides inference tests benchmarks tutorials
	$(VENV)/bin/ruff format --check zoo guides inference tests benchmarks

clean:
	rm -rf runs .pytest_cache
