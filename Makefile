# The two commands a fresh machine needs: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEMO_WORLD := data/synthetic

.PHONY: install demo test clean-demo

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	# pip resolves torch/torchvision to the wheels cached on these machines (never uv/poetry).
	$(BIN)/python -m pip install -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

$(DEMO_WORLD)/world.json: | $(STAMP)
	$(BIN)/python -m data_shards.synth $(DEMO_WORLD) --overwrite

demo: $(STAMP) $(DEMO_WORLD)/world.json
	$(BIN)/python -m finetune.color_histogram $(DEMO_WORLD)

test: $(STAMP)
	$(BIN)/python -m pytest -q

clean-demo:
	rm -rf $(DEMO_WORLD) results/demo
