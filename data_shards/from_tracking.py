"""Tracking ground truth -> ReID crops: `python data_shards/from_tracking.py OUT_DIR SOURCE [SOURCE ...] --help`.

MOTChallenge sequences (frames or a video) and AI City Challenge 2023 Track 1 scenes become
Market-1501-named crops (train / query / gallery) or unlabeled crops / shards for pretraining.
Thin entry point: the code lives in ``soliderkit.data.tracking``.
"""
import sys

from soliderkit.data.tracking import main

if __name__ == "__main__":
    sys.exit(main())
