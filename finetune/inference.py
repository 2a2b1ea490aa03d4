"""TAO 'inference': embeddings of every image in the query/gallery folders or --image-dir.

Thin entry point: the code lives in ``soliderkit.finetune.inference``.
"""
import sys

from soliderkit.finetune.inference import main

if __name__ == "__main__":
    sys.exit(main())
