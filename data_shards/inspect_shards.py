"""Validate a shard folder and print its statistics: `python data_shards/inspect_shards.py OUT_DIR --help`.

Thin entry point: the code lives in ``soliderkit.data.inspection``.
"""
import sys

from soliderkit.data.inspection import main

if __name__ == "__main__":
    sys.exit(main())
