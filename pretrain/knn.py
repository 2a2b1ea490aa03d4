"""kNN ReID probe of a backbone (no training): Market-1501 mAP of its pooled features.

Thin entry point: the code lives in ``soliderkit.pretrain.knn``.
"""
import sys

from soliderkit.pretrain.knn import main

if __name__ == "__main__":
    sys.exit(main())
