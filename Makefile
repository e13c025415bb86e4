# panoptic-deploy: make report (the demo pipeline), make dryrun, make venv, make test.
#
# The venv is created on first use. torch is installed FIRST and pinned, so that nothing later pulls another
# (multi-GB CUDA) build: on a GPU machine with its own CUDA torch, set TORCH_SPEC to match it.

PYTHON ?= python3
VENV ?= .venv
CORES ?= 1
TORCH_SPEC ?= torch==2.13.0
PIP := $(VENV)/bin/python -m pip
SNAKEMAKE := $(VENV)/bin/python -m snakemake

.PHONY: venv report dryrun test test-slurm clean-results

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(PIP) install --upgrade pip
	$(PIP) install "$(TORCH_SPEC)"
	$(PIP) install -e ".[pipeline,test]"
	# ModelOpt without its dependency resolution (it would replace torch); its runtime needs are in [pipeline].
	$(PIP) install --no-deps "nvidia-modelopt==0.47.0"
	touch $@

report: venv
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" $(SNAKEMAKE) --cores $(CORES) results/report.md

dryrun: venv
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" $(SNAKEMAKE) --dry-run --cores $(CORES) results/report.md

# The parity tests compare with official outputs recorded on one CPU; they must hold whichever kernels this
# CPU's PyTorch picks (AVX2 or AVX-512 on x86-64: the machines vary), so they run a second time with the AVX2
# kernels forced (on an AVX2-only CPU that run repeats the first).
PARITY_TESTS := tests/test_model_parity.py
AVX2_KERNELS := ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2

# The workflow catalog's two checks too: snakefmt (line length in pyproject.toml) and Snakemake's linter.
test: venv
	$(VENV)/bin/python -m ruff check .
	$(VENV)/bin/python -m mypy
	$(VENV)/bin/python -m snakefmt --check workflow/Snakefile workflow/rules/
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" $(SNAKEMAKE) --lint
	$(VENV)/bin/python -m pytest -m "not slurm"
	$(AVX2_KERNELS) $(VENV)/bin/python -m pytest $(PARITY_TESTS)

# The workflow through the SLURM executor on a single-node cluster started here (root; Debian packages).
# About 10 minutes on the 2-core machine, so not part of 'make test' (CI budget): run it before a release.
test-slurm: venv
	$(PIP) install -e ".[slurm]"
	bash tests/slurm/start-cluster.sh
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" $(VENV)/bin/python -m pytest -m slurm -s tests/test_slurm.py

clean-results:
	rm -rf results .snakemake
