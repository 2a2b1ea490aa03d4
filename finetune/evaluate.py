"""TAO 'evaluate': Market-1501 metrics, CMC curve and ranked matches of a checkpoint.

Thin entry point: the code lives in ``soliderkit.finetune.evaluate``.
"""
import sys

from soliderkit.finetune.evaluate import main

if __name__ == "__main__":
    sys.exit(main())
