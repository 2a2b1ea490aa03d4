"""What only stage 1 needs: multi-crop views, DINO head / loss / EMA, semantic clustering and the
part task, the kNN monitor. The loop is ``pretrain/run.py``. Never imports ``soliderkit.finetune``."""
