"""What only stage 2 needs: the ReID head, losses, identity sampler, optimiser, the TAO tasks
(evaluate, inference, export), the match demo and :class:`FeatureExtractor` (embeddings from
Python). The loop is ``finetune/run.py``. Never imports ``soliderkit.pretrain``.

``from soliderkit.finetune import FeatureExtractor`` loads torch and the model code on first use
only, so ``soliderkit.finetune.config`` stays cheap to import.
"""

__all__ = ["FeatureExtractor"]


def __getattr__(name: str):
    if name == "FeatureExtractor":
        from soliderkit.finetune.extractor import FeatureExtractor

        return FeatureExtractor
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
