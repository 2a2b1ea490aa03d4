"""soliderkit: the library both stages of the SOLIDER ReID toolkit import.

- ``soliderkit.backbone``: the one Swin (T/S/B, pico) with SOLIDER's semantic controller, checkpoint
  I/O and adapters for foreign checkpoints.
- ``soliderkit.config``, ``soliderkit.io``, ``soliderkit.run_control``: config schemas and files,
  atomic writes, what both training loops share (signals, NaN guard, checkpoints).
- ``soliderkit.reid``: the ReID core (dataset parsers, transforms, embedding extraction, metrics,
  re-ranking, plots, the colour-histogram baseline).
- ``soliderkit.data``: the synthetic world and WebDataset shards (build, inspect, stream).
- ``soliderkit.pretrain`` / ``soliderkit.finetune``: what only stage 1 / stage 2 needs; the loops
  themselves are the scripts ``pretrain/run.py`` and ``finetune/run.py``.
"""
__version__ = "0.1.0"
