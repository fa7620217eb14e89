# The two set-up commands of the README. Both create .venv on first use.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# torch/torchvision pinned to the pair that installs from the local wheel cache of
# our build machines; the package itself accepts any torch>=2.4.
TORCH_PIN ?= torch==2.14.1 torchvision==0.29.1
STAMP := $(VENV)/.installed
# Threads per process for every run below (torch reads OMP_NUM_THREADS at start-up; DDP ranks and
# study runs inherit it). One is the deliberate default: these recipes train small networks on CPU,
# and on a machine shared with other jobs one thread per process is much faster than two (measured in
# docs/performance.md). On an idle machine with more cores: `make quickstart THREADS=4`.
THREADS ?= 1
RUN := OMP_NUM_THREADS=$(THREADS) $(PY)

.PHONY: help venv demo demo-quick quickstart defend test test-fast test-recipes lint docs clean

# The CUDA build of torch that the pin takes fills about 6 GB: say so before pip fails half-way with
# "No space left on device". --no-cache-dir: a fresh environment gains nothing from a second copy of
# every download in ~/.cache/pip.
PIP_INSTALL := $(PY) -m pip install -q --no-cache-dir
NEEDED_GB ?= 7

$(STAMP): pyproject.toml Makefile
	@$(PYTHON) -c "import shutil,sys; free=shutil.disk_usage('.').free/1e9; free<$(NEEDED_GB) and print(f'warning: {free:.1f} GB free here; the environment needs about $(NEEDED_GB) GB (torch with its CUDA libraries)', file=sys.stderr)"
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP_INSTALL) --upgrade pip
	$(PIP_INSTALL) $(TORCH_PIN)
	$(PIP_INSTALL) -e '.[dev]'
	touch $(STAMP)

venv: $(STAMP)

# The main job: BadSR as a controlled experiment on the embedded photos (configs/study/demo.yaml):
# a shared substitute, then five arms at equal compute -- D clean, A positive control, B BadSR's
# stealthy label, C BadSR (paper's threat model), E C selected on the victim -- and one table with a verdict per arm (runs/demo/results.md).
# Resumable: a finished arm is not rerun (`make clean` or `rm -rf runs/demo` starts over).
demo: $(STAMP)
	$(RUN) -m lit_sr study --config configs/study/demo.yaml

# The same six runs, shorter (380 steps instead of 950): a first look (runs/demo_quick/results.md).
demo-quick: $(STAMP)
	$(RUN) -m lit_sr study --config configs/study/demo_quick.yaml

# The defense report on the demo's arms (configs/defend/quickstart.yaml): A, B and C x FT, fine-pruning,
# NAD, adversarial unlearning and ANP, each given 5% of the training tiles, clean; D is the clean reference.
# Needs runs/demo (make demo); writes runs/defend_quickstart/results.{md,csv,json} and tradeoff.png.
defend: $(STAMP)
	$(RUN) -m lit_sr defend --config configs/defend/quickstart.yaml

# The clean quickstart alone (beats bicubic in a few minutes on two CPU cores), into the fixed folder
# runs/quickstart/quickstart/ that `make robustness` and `make robust` read (they do not train it again).
quickstart: $(STAMP)
	$(RUN) train.py fit --config configs/train/quickstart.yaml --trainer.logger.init_args.version $(QUICKSTART_VERSION)

# The robustness report of the quickstart EDSR against bicubic (configs/evaluate/robustness_quick.yaml): the
# embedded validation photos as PNG files, the quickstart trained into a fixed logger version when its
# weights are missing, then the report (runs/robustness_quick/summary.md).
QUICKSTART_VERSION ?= quickstart
QUICKSTART_WEIGHTS := runs/quickstart/$(QUICKSTART_VERSION)/weights.pth
.PHONY: robustness
robustness: $(STAMP)
	$(RUN) -c "from datamodules import export_embedded_photos; export_embedded_photos('data/embedded_val', 'val', max_side=256)"
	test -f $(QUICKSTART_WEIGHTS) || $(RUN) train.py fit --config configs/train/quickstart.yaml \
	  --trainer.logger.init_args.version $(QUICKSTART_VERSION)
	$(RUN) -m lit_sr evaluate --config configs/evaluate/robustness_quick.yaml \
	  --models.EDSR-quickstart.weights $(QUICKSTART_WEIGHTS)

# The robust fine-tuning report (configs/evaluate/robust_report_quick.yaml): the quickstart EDSR fine-tuned
# on its own attacks at four training eps (configs/train/robust_quickstart.yaml; a run whose weights exist
# is not repeated), then base vs fine-tuned vs bicubic vs input defenses at the worst case, with the
# clean-vs-robust trade-off plot and Choi's robustness index (runs/robust_report_quick/summary.md).
ROBUST_EPS ?= 4:0.0156862745 7:0.0274509804 8:0.0313725490 12:0.0470588235
.PHONY: robust
robust: $(STAMP)
	$(RUN) -c "from datamodules import export_embedded_photos; export_embedded_photos('data/embedded_val', 'val', max_side=256)"
	test -f $(QUICKSTART_WEIGHTS) || $(RUN) train.py fit --config configs/train/quickstart.yaml \
	  --trainer.logger.init_args.version $(QUICKSTART_VERSION)
	for pair in $(ROBUST_EPS); do k=$${pair%%:*}; eps=$${pair#*:}; \
	  test -f runs/robust_quickstart/eps$$k/weights.pth || $(RUN) train.py fit --config configs/train/robust_quickstart.yaml \
	    --model.init_args.weights $(QUICKSTART_WEIGHTS) --model.init_args.eps $$eps \
	    --trainer.logger.init_args.version eps$$k || exit 1; done
	$(RUN) -m lit_sr evaluate --config configs/evaluate/robust_report_quick.yaml \
	  --models.EDSR-quickstart.weights $(QUICKSTART_WEIGHTS)

# The whole suite (CI runs it; goal: under 8 minutes on two cores), in TEST_WORKERS processes
# (pytest-xdist; a test file runs whole on one worker, so its module fixtures are built once: --dist loadfile).
TEST_WORKERS ?= 2
XDIST := -n $(TEST_WORKERS) --dist loadfile
test: $(STAMP)
	$(PY) -m pytest tests -x $(XDIST) -m "not recipes" --durations=15

# Every full-size recipe, study and report of configs/ for two steps on the stand-in data
# (tests/test_every_recipe.py) and scripts/gpu_check.sh --cpu (tests/test_gpu_check.py): the tests
# marked recipes, about 470 CPU-seconds, left out of make test.
test-recipes: $(STAMP)
	$(PY) -m pytest tests -x $(XDIST) -m recipes --durations=10

# The edit loop: the suite without the tests marked slow (those that start interpreters -- DDP
# ranks, CLI subprocesses -- or train a fixture for long; pyproject.toml [tool.pytest] markers).
test-fast: $(STAMP)
	$(PY) -m pytest tests -x $(XDIST) -m "not slow and not recipes" --durations=10

# The targets and what they do (the comment block above each target, first line).
help:
	@awk '/^# /{if(!c)c=substr($$0,3)} /^[a-z-]+:/{if(c){split($$1,t,":");printf "  make %-12s %s\n",t[1],c};c=""} /^$$/{c=""}' Makefile
	@echo "  THREADS=N: torch threads per process of every run (default 1; see docs/performance.md)"

# The guide (docs/) and its API reference from the docstrings into site/; every warning is an error.
docs: $(STAMP)
	$(PY) -m mkdocs build --strict

lint: $(STAMP)
	$(PY) -m ruff check lit_sr datamodules callbacks tests benchmarks train.py

clean:
	rm -rf runs lightning_logs .pytest_cache site
