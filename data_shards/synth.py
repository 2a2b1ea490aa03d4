"""Generate the synthetic Market-1501-style ReID world: `python data_shards/synth.py OUT_DIR --help`.

Thin entry point: the code lives in ``soliderkit.data.synth``.
"""
import sys

from soliderkit.data.synth import main

if __name__ == "__main__":
    sys.exit(main())
