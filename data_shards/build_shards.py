"""Build WebDataset shards of person crops: `python data_shards/build_shards.py SRC OUT_DIR --help`.

Thin entry point: the code lives in ``soliderkit.data.build``.
"""
import sys

from soliderkit.data.build import main

if __name__ == "__main__":
    sys.exit(main())
