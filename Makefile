# Two commands on a fresh machine: `make run` (main job) and `make test` (the tests).
# Each creates or refreshes .venv from pyproject.toml, where the whole stack is pinned.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp

.PHONY: run check test test-slow bench lint gate baseline baseline-example gate-proof \
	gpu-wheels gpu-check

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

# The main job: the default sweep, then its report (the newest run under results/).
run: $(STAMP)
	$(PY) -m harness sweep
	$(PY) -m harness report

check: $(STAMP)
	$(PY) -m harness check

test: $(STAMP)
	$(PY) -m pytest -m "not slow"

test-slow: $(STAMP)
	$(PY) -m pytest -m slow || test $$? -eq 5  # 5: no slow tests selected

# glibc returns every freed block of >= 32 MiB to the OS, so each call that allocates one
# page-faults fresh memory (7 ms per 32 MiB here): an allocator artefact that swamps the
# scaling the benchmarks compare. Raised thresholds make freed memory reusable; the setting is
# recorded in results/bench.json and printed by the target check.
BENCH_ENV := MALLOC_MMAP_THRESHOLD_=2147483647 MALLOC_TRIM_THRESHOLD_=4294967296

bench: $(STAMP)
	$(BENCH_ENV) $(PY) -m pytest tests/bench --benchmark-enable --benchmark-only \
		--benchmark-min-rounds=5 --benchmark-columns=min,median,iqr,rounds \
		--benchmark-sort=name --benchmark-json=results/bench.json
	$(PY) -m tests.bench.targets results/bench.json

lint: $(STAMP)
	$(VENV)/bin/ruff check .

# The CI regression gate (.ci/gate): an A/B run of results/baseline/REF against this tree.
gate: $(STAMP)
	.ci/gate

# Point the gate's base at the current commit (commit the file; CI then measures against it).
baseline: $(STAMP)
	git rev-parse HEAD > results/baseline/REF
	@echo "results/baseline/REF = $$(cat results/baseline/REF): commit it"

# Refresh the committed example numbers for `compare` (not used by the gate): three smoke
# sweeps, each case's median replicate kept.
baseline-example: $(STAMP)
	rm -rf results/baseline/smoke results/baseline/replicates
	for i in 1 2 3; do $(PY) -m harness sweep sweep=smoke \
		results_dir=results/baseline/replicates/$$i > /dev/null || exit 1; done
	$(PY) -m harness merge --pick median results/baseline/smoke results/baseline/replicates
	rm -rf results/baseline/replicates

# The gate's calibration (docs/gate.md): 10 gate runs each of A/A, an injected 1.5x slowdown
# and injected +20% memory, about 40 minutes on 2 cores.
gate-proof: $(STAMP)
	$(PY) -m tests.bench.gate_proof --runs 10 --out results/gate-proof

# The GPU check (docs/gpu.md). Here, with network: the wheels the GPU image lacks, at the pinned
# versions, into .gpu-wheels/ (ignored; carry it to the GPU machine with the tree).
gpu-wheels: $(STAMP)
	$(PY) -m harness gpu-wheels

# There, without network and without .venv, under the image's own $(PYTHON): a venv over its
# packages with .gpu-wheels/ installed offline, then doctor, the CUDA tests, the gpu-check
# sweep and its report within 480 s, packed into at most 8 files in the empty folder $(OUT).
gpu-check:
	$(PYTHON) -m harness gpu-check --out "$(OUT)" --budget-s 480
