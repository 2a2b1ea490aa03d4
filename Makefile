# The two commands a fresh machine needs: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEMO_WORLD := data/synthetic

.PHONY: install demo test test-fast clean-demo

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	# pip resolves torch/torchvision to the wheels cached on these machines (never uv/poetry).
	$(BIN)/python -m pip install -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

$(DEMO_WORLD)/world.json: | $(STAMP)
	$(BIN)/python data_shards/synth.py $(DEMO_WORLD) --overwrite

# Every core for the one process; -q keeps accelerate's own traceback out of a failed run's one-line error.
LAUNCH := $(BIN)/accelerate launch -q --num_processes 1 --num_machines 1 --mixed_precision no --dynamo_backend no \
	--num_cpu_threads_per_process $(shell nproc)
DEMO_RESULTS := results/demo

demo: $(STAMP) $(DEMO_WORLD)/world.json
	# --overwrite: a previous demo run is moved aside (results/demo/finetune/train.replaced-<time>), not mixed in
	$(LAUNCH) finetune/run.py --config configs/finetune/synthetic_tiny.yaml results_dir=$(DEMO_RESULTS)/finetune --overwrite
	$(BIN)/python -m soliderkit.reid.compare $(DEMO_WORLD) \
		"swin_pico fine-tuned from random init=$(DEMO_RESULTS)/finetune/train/metrics.json"

test: $(STAMP)
	$(BIN)/python -m pytest -q

# The quick loop while editing (under a minute on 2 cores): all but the end-to-end and multi-process runs.
test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow"

clean-demo:
	rm -rf $(DEMO_WORLD) $(DEMO_RESULTS)
