# Two commands do all the set-up on a fresh machine (Python 3.11 + pip):
#   make demo   - create .venv from requirements.lock if missing, then search + finalize on the built-in data
#   make test   - create .venv if missing, then run the whole test suite
#   make docs   - build the documentation site (mkdocs.yml, docs/ -> site/) offline; strict: a broken link fails
#   make lock   - regenerate requirements.lock from requirements.txt (and lock-pins.txt) with uv
#   make test-latest - the suite in a throwaway .venv-latest holding the newest versions requirements.txt admits
VENV ?= .venv
PY := $(VENV)/bin/python
LOCK := requirements.lock
STAMP := $(VENV)/.installed-$(shell cksum $(LOCK) | cut -d' ' -f1)
LATEST := .venv-latest

.PHONY: demo test docs lint bench venv report-screenshot lock test-latest

venv: $(STAMP)

# Every package pinned, transitive ones included: a release made after the lock cannot change a fresh install.
# uv installs it (a fresh .venv in 45 s with empty caches, 18 s warm; pip alone took 2 min 9 s); pip is the fallback.
$(STAMP): $(LOCK)
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q uv
	$(VENV)/bin/uv pip install -q --python $(PY) -r $(LOCK) || $(PY) -m pip install -q -r $(LOCK)
	rm -f $(VENV)/.installed-* && touch $@

lock: $(STAMP)
	$(VENV)/bin/uv pip compile requirements.txt -c lock-pins.txt --universal --python-version 3.11 -o $(LOCK)

# What a user who installs requirements.txt today gets: a breaking release shows up here before it reaches them.
test-latest:
	rm -rf $(LATEST) && python3 -m venv $(LATEST)
	$(LATEST)/bin/python -m pip install -q uv
	$(LATEST)/bin/uv pip install -q --python $(LATEST)/bin/python -r requirements.txt
	@$(LATEST)/bin/python -m pip list 2>/dev/null | grep -iE '^(torch|torchvision|ray|optuna|numpy|pandas|scikit-learn|timm|onnxruntime) '
	$(LATEST)/bin/ruff check tune tests benchmarks
	$(LATEST)/bin/python -m pytest -q --durations=15

demo: $(STAMP)
	$(PY) -m tune search --name demo-$(shell date +%Y%m%d-%H%M%S)

test: $(STAMP)
	$(VENV)/bin/ruff check tune tests benchmarks
	$(PY) -m pytest -q --durations=15

docs: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict

bench: $(STAMP)
	$(PY) benchmarks/cache_speedup.py --threads 1
	$(PY) benchmarks/search_overhead.py
	$(PY) benchmarks/load_200.py
	$(PY) benchmarks/report_200.py
	$(PY) benchmarks/demo_difficulty.py
	$(PY) benchmarks/backbones.py
	$(PY) benchmarks/explain_cost.py

# The picture of a run's report (README, docs/index.md), taken by headless Chromium at 1280x900:
#   make report-screenshot RUN=results/demo-YYYYMMDD-HHMMSS [SHOT=docs/report.png]
SHOT ?= docs/report.png
report-screenshot: $(STAMP)
	@test -n "$(RUN)" || { echo "usage: make report-screenshot RUN=results/NAME [SHOT=docs/report.png]"; exit 2; }
	$(PY) -m tune report $(RUN)
	chromium --headless --no-sandbox --disable-gpu --hide-scrollbars --window-size=1280,900 \
	  --virtual-time-budget=10000 --screenshot=$(SHOT) file://$(abspath $(RUN))/report.html
