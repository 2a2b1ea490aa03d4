"""What only stage 2 needs: the ReID head, losses, identity sampler, optimiser, and the TAO tasks
(evaluate, inference, export). The loop is ``finetune/run.py``. Never imports ``soliderkit.pretrain``."""
