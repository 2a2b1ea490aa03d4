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

# Both stages on the synthetic world: stage 1 (DINO pretraining on the unlabeled crops) writes
# results/demo/pretrain/backbone.safetensors, stage 2 fine-tunes from it, then one results table.
# --overwrite: a previous demo run is moved aside (e.g. results/demo/finetune/train.replaced-<time>), not mixed in.
demo: $(STAMP) $(DEMO_WORLD)/world.json
	$(LAUNCH) pretrain/run.py --config configs/pretrain/synthetic_demo.yaml results_dir=$(DEMO_RESULTS)/pretrain --overwrite
	$(LAUNCH) finetune/run.py --config configs/finetune/synthetic_demo.yaml results_dir=$(DEMO_RESULTS)/finetune \
		model.pretrained_model_path=$(DEMO_RESULTS)/pretrain/backbone.safetensors --overwrite
	$(BIN)/python -m soliderkit.reid.compare $(DEMO_WORLD) \
		"swin_pico: 150-step DINO, then fine-tuned=$(DEMO_RESULTS)/finetune/train/metrics.json"

test: $(STAMP)
	$(BIN)/python -m pytest -q

# The quick loop while editing (under a minute on 2 cores): all but the end-to-end and multi-process runs.
test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow"

clean-demo:
	rm -rf $(DEMO_WORLD) $(DEMO_RESULTS)
