"""TAO 'export': ONNX (B x 3 x H x W -> embedding) checked with onnxruntime, plus a DeepStream config.

Thin entry point: the code lives in ``soliderkit.finetune.export``.
"""
import sys

from soliderkit.finetune.export import main

if __name__ == "__main__":
    sys.exit(main())
