"""Stream shards as one rank of a run would (keys, counts): `python data_shards/stream_shards.py OUT_DIR --help`.

Thin entry point: the code lives in ``soliderkit.data.stream``.
"""
import sys

from soliderkit.data.stream import main

if __name__ == "__main__":
    sys.exit(main())
