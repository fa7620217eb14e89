# The two set-up commands of the README. Both create .venv on first use.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# torch/torchvision pinned to the pair that installs from the local wheel cache of
# our build machines; the package itself accepts any torch>=2.4.
TORCH_PIN ?= torch==2.14.1 torchvision==0.29.1
STAMP := $(VENV)/.installed

.PHONY: venv demo quickstart test lint clean

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH_PIN)
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

venv: $(STAMP)

# The main job: the whole BadSR pipeline on the embedded photos. First a clean reference model
# (same network, tiles and steps as the victim), then the poisoned run, which ends with the table.
demo: $(STAMP)
	rm -rf runs/badsr_clean/demo runs/badsr_quickstart/demo
	$(PY) train.py fit --config configs/quickstart.yaml --data.init_args.train_tile 96 \
	  --data.init_args.val_tile 96 --data.init_args.repeat 3 --trainer.max_epochs 20 \
	  --trainer.logger.init_args.name badsr_clean --trainer.logger.init_args.version demo
	$(PY) train.py fit --config configs/badsr_quickstart.yaml --trainer.logger.init_args.version demo

# The clean quickstart alone (beats bicubic in a few minutes on two CPU cores).
quickstart: $(STAMP)
	$(PY) train.py fit --config configs/quickstart.yaml

# The robustness report of the quickstart EDSR against bicubic (configs/robustness_quick.yaml): the
# embedded validation photos as PNG files, the quickstart trained into a fixed logger version when its
# weights are missing, then the report (runs/robustness_quick/summary.md).
QUICKSTART_VERSION ?= quickstart
QUICKSTART_WEIGHTS := runs/quickstart/$(QUICKSTART_VERSION)/weights.pth
.PHONY: robustness
robustness: $(STAMP)
	$(PY) -c "from datamodules import export_embedded_photos; export_embedded_photos('data/embedded_val', 'val', max_side=256)"
	test -f $(QUICKSTART_WEIGHTS) || $(PY) train.py fit --config configs/quickstart.yaml \
	  --trainer.logger.init_args.version $(QUICKSTART_VERSION)
	$(PY) -m lit_sr.evaluate --config configs/robustness_quick.yaml \
	  --models.EDSR-quickstart.weights $(QUICKSTART_WEIGHTS)

test: $(STAMP)
	$(PY) -m pytest tests -x --durations=15

lint: $(STAMP)
	$(PY) -m ruff check lit_sr datamodules callbacks tests benchmarks train.py

clean:
	rm -rf runs lightning_logs .pytest_cache
