"""Match demo: the top-k matches of a query image in a folder, as a picture with distances.

Thin entry point: the code lives in ``soliderkit.finetune.match``.
"""
import sys

from soliderkit.finetune.match import main

if __name__ == "__main__":
    sys.exit(main())
