"""Export a fine-tuned ReID model to ONNX, check it, and write a DeepStream NvDCF ReID snippet.

    python finetune/export.py --checkpoint results/finetune/card_market1501_swin_tiny/train/model.safetensors \
        [--config configs/finetune/card_market1501_swin_tiny.yaml] [--onnx-file model.onnx] [--fp16] [--overwrite] \
        [key=value ...]

The toolkit's own checkpoints record their model and preprocessing, so the config is optional
for them (the input size, pixel mean / std of the graph and the DeepStream snippet come from
the checkpoint); SOLIDER-REID / TAO checkpoints need it (``model`` and ``dataset`` sections).

The TAO ``export`` section is read as TAO reads it (``checkpoint``, ``onnx_file``,
``results_dir``, ``gpu_id``); the command-line flags override it. The graph is
``input`` (B x 3 x H x W float32, RGB, normalised with the checkpoint's pixel mean / std; B dynamic)
-> ``fc_pred`` (B x D float32: the eval-mode embedding, i.e. the BNNeck output when
``model.neck_feat: after``), opset 17 or later. Test-time flip averaging
(``model.with_flip_feature``) is an evaluation option and is not baked into the graph.

After export: ``onnx.checker`` runs, and onnxruntime (CPU) is compared with PyTorch eager
(fp32, CPU) at batch 1 and 8 on random images and on real ones (``--verify-images`` or the
config's query folder when it exists): max abs difference <= 1e-4. With ``--fp16`` the
weights and arithmetic are half precision inside the graph (input and output stay float32)
and the comparison, still against the fp32 PyTorch model, allows max abs difference <=
2e-2 x the largest |embedding value| and needs cosine similarity >= 0.999 per image.
Nothing is left on disk when a check fails; an existing file is never overwritten without
``--overwrite`` (``--force``), which moves the old files aside.

Beside the ONNX file, ``<stem>_nvdcf_reid.yml`` holds the ``ReID:`` section of a DeepStream
NvDCF tracker config (feature size, input dims, colour order, offsets, net scale factor;
see :func:`deepstream_preprocessing` for how the last two follow from the pixel mean/std).
"""
from __future__ import annotations

import argparse
import copy
import json
import sys
import warnings
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch import nn

from soliderkit.cli import HelpFormatter
from soliderkit.config import add_config_args, parse_config_from_args
from soliderkit.finetune.config import FinetuneConfig, add_neck_feat_argument
from soliderkit.io import atomic_path, atomic_write_text, check_writable, refuse_or_move_aside

INPUT_NAME = "input"
OUTPUT_NAME = "fc_pred"  # TAO's ReIdentificationNet output name, which DeepStream samples expect
DEFAULT_OPSET = 17
FP32_ATOL = 1e-4
FP16_RELATIVE_ATOL = 2e-2
FP16_MIN_COSINE = 0.999


class EmbeddingGraph(nn.Module):
    """``input`` -> ``fc_pred``: the eval-mode ReID embedding, float32 in and out."""

    def __init__(self, model: nn.Module, fp16: bool = False):
        super().__init__()
        self.model = model
        self.fp16 = fp16

    def forward(self, input: torch.Tensor) -> torch.Tensor:  # noqa: A002 (the ONNX input's name)
        x = input.half() if self.fp16 else input
        return self.model(x).float()


def export_onnx(model: nn.Module, path: str | Path, *, input_size: tuple[int, int], opset: int = DEFAULT_OPSET,
                fp16: bool = False, device: torch.device | str = "cpu",
                metadata: dict[str, str] | None = None) -> None:
    """Write ``model`` (a ReidModel; its eval-mode forward returns the embedding) as ONNX."""
    if opset < DEFAULT_OPSET:
        raise ValueError(f"opset {opset} < {DEFAULT_OPSET}: LayerNormalization needs opset 17")
    model = copy.deepcopy(model).eval().to(device)
    if fp16:
        model = model.half()
    graph = EmbeddingGraph(model, fp16=fp16).eval()
    # Trace at batch 2 so that nothing specialises on a batch of one; the batch axis is dynamic.
    dummy = torch.randn(2, 3, *input_size, device=device)
    with warnings.catch_warnings():
        # The tracer warns where Python reads tensor sizes (input checks, window padding): all of
        # them depend on H and W, which the graph fixes; the batch axis stays symbolic.
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", message=".*legacy TorchScript-based ONNX export.*")
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        warnings.filterwarnings("ignore", category=FutureWarning)
        with torch.no_grad():
            # dynamo=False: the TorchScript exporter (the torch.export-based one needs onnxscript).
            torch.onnx.export(graph, (dummy,), str(path), input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                              dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
                              opset_version=opset, do_constant_folding=True, dynamo=False)
    if metadata:
        import onnx

        proto = onnx.load(str(path))
        onnx.helper.set_model_props(proto, {k: str(v) for k, v in metadata.items()})
        onnx.save(proto, str(path))


def check_onnx(path: str | Path) -> dict:
    """``onnx.checker`` plus the graph's interface: names, shapes (symbolic dims as strings), opset."""
    import onnx

    proto = onnx.load(str(path))
    onnx.checker.check_model(proto)

    def shape(value):
        return [d.dim_param or d.dim_value for d in value.type.tensor_type.shape.dim]

    return {"inputs": {v.name: shape(v) for v in proto.graph.input},
            "outputs": {v.name: shape(v) for v in proto.graph.output},
            "opset": max(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx"))}


def compare_with_pytorch(path: str | Path, model: nn.Module, batches: dict[str, torch.Tensor]) -> dict[str, dict]:
    """Run onnxruntime (CPU) and PyTorch eager (fp32, CPU) on each named batch; return the differences."""
    import onnxruntime as ort

    reference = copy.deepcopy(model).float().cpu().eval()
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    results = {}
    for name, images in batches.items():
        with torch.no_grad():
            expected = reference(images.float().cpu())
        got = torch.from_numpy(session.run([OUTPUT_NAME], {INPUT_NAME: images.float().cpu().numpy()})[0])
        if got.shape != expected.shape:
            raise RuntimeError(f"onnxruntime returned {tuple(got.shape)} for {name}, PyTorch {tuple(expected.shape)}")
        cosine = torch.nn.functional.cosine_similarity(got.double(), expected.double(), dim=1)
        results[name] = {"batch": int(images.shape[0]), "max_abs_diff": float((got - expected).abs().max()),
                         "max_abs_value": float(expected.abs().max()), "min_cosine": float(cosine.min())}
    return results


def parity_failures(results: dict[str, dict], fp16: bool) -> list[str]:
    failures = []
    for name, r in results.items():
        if fp16:
            limit = FP16_RELATIVE_ATOL * max(r["max_abs_value"], 1e-6)
            if r["max_abs_diff"] > limit or r["min_cosine"] < FP16_MIN_COSINE:
                failures.append(f"{name}: max abs diff {r['max_abs_diff']:.3g} (limit {limit:.3g}), "
                                f"min cosine {r['min_cosine']:.6f} (limit {FP16_MIN_COSINE})")
        elif r["max_abs_diff"] > FP32_ATOL:
            failures.append(f"{name}: max abs diff {r['max_abs_diff']:.3g} > {FP32_ATOL}")
    return failures


def deepstream_preprocessing(mean: Sequence[float], std: Sequence[float]) -> dict:
    """DeepStream's ``offsets`` / ``netScaleFactor`` for a model trained on (x/255 - mean) / std.

    DeepStream feeds y = netScaleFactor * (x - offset_c) with x the 0..255 pixel value. The
    network was trained on (x/255 - m_c) / s_c = (x - 255 m_c) / (255 s_c), so
    offset_c = 255 m_c and netScaleFactor = 1 / (255 s). DeepStream has a single scale factor:
    when the std differs per channel it cannot be matched exactly; the mean std s is used and
    channel c is then scaled by s_c / s, a relative error of |s_c / s - 1| (returned as
    ``max_relative_scale_error``, with a ``warning``).
    """
    std_mean = float(np.mean(std))
    errors = [abs(s / std_mean - 1.0) for s in std]
    out = {"offsets": [255.0 * float(m) for m in mean], "net_scale_factor": 1.0 / (255.0 * std_mean),
           "max_relative_scale_error": max(errors), "warning": None}
    if max(errors) > 1e-6:
        out["warning"] = (f"pixel std {list(std)} differs per channel; DeepStream has one scale factor, "
                          f"so the mean std {std_mean:.6g} is used: channel inputs are off by up to "
                          f"{100 * max(errors):.2f}% in scale")
    return out


def nvdcf_reid_config(onnx_name: str, *, feature_size: int, input_size: tuple[int, int], mean: Sequence[float],
                      std: Sequence[float], fp16: bool, batch_size: int = 100) -> str:
    """The ``ReID:`` section of a DeepStream NvDCF tracker config (YAML text with comments)."""
    pre = deepstream_preprocessing(mean, std)
    height, width = input_size
    mode = 1 if fp16 else 0
    engine = f"{onnx_name}_b{batch_size}_gpu0_{'fp16' if fp16 else 'fp32'}.engine"
    offsets = ", ".join(f"{o:.4f}" for o in pre["offsets"])
    lines = [
        f"# DeepStream NvDCF tracker: ReID section for {onnx_name} (written by finetune/export.py).",
        "# Merge it into the tracker config (e.g. config_tracker_NvDCF_accuracy.yml); relative paths",
        "# are resolved from that file's folder.",
        "# Preprocessing: DeepStream computes y = netScaleFactor * (x - offsets[c]) on 0..255 RGB pixels;",
        "# the model was trained on (x / 255 - mean[c]) / std[c] = (x - 255 * mean[c]) / (255 * std[c]),",
        f"# so offsets = 255 * mean = 255 * {list(mean)} and netScaleFactor = 1 / (255 * std) with std = {list(std)}.",
    ]
    if pre["warning"]:
        lines.append(f"# WARNING: {pre['warning']}.")
    lines += [
        "# Input: the crop is resized to the full inferDims without keeping its aspect ratio (keepAspc: 0),",
        "# as the model's test transform does. Output: fc_pred, L2-normalised by the tracker.",
        "# nvinfer (SGIE) equivalents: onnx-file=" + onnx_name + f" output-blob-names={OUTPUT_NAME}"
        f" infer-dims=3;{height};{width} model-color-format=0"
        f" offsets={';'.join(f'{o:.4f}' for o in pre['offsets'])} net-scale-factor={pre['net_scale_factor']:.8f}",
        "ReID:",
        "  reidType: 2                 # 0 none, 1 NvDeepSORT, 2 re-association, 3 both",
        "  outputReidTensor: 0         # 1 attaches the embeddings to the tracker's output metadata",
        f"  batchSize: {batch_size:<17}# max crops per inference (the ONNX batch axis is dynamic)",
        "  workspaceSize: 1000         # TensorRT builder workspace, MB",
        f"  reidFeatureSize: {feature_size:<11}# embedding length (fc_pred)",
        "  reidHistorySize: 100",
        f"  inferDims: [3, {height}, {width}]",
        f"  networkMode: {mode:<15}# 0 fp32 (checked against PyTorch at 1e-4), 1 fp16, 2 int8",
        "  inputOrder: 0               # NCHW",
        "  colorFormat: 0              # RGB",
        f"  offsets: [{offsets}]",
        f"  netScaleFactor: {pre['net_scale_factor']:.8f}",
        "  keepAspc: 0",
        "  addFeatureNormalization: 1",
        f'  onnxFile: "{onnx_name}"',
        f'  modelEngineFile: "{engine}"   # built from onnxFile on first run',
    ]
    return "\n".join(lines) + "\n"


def snippet_path(onnx_file: Path) -> Path:
    return onnx_file.with_name(onnx_file.stem + "_nvdcf_reid.yml")


def _real_images(folder: str | None, transform, count: int = 8) -> torch.Tensor | None:
    if folder is None or not Path(folder).is_dir():
        return None
    from PIL import Image

    files = sorted(p for p in Path(folder).rglob("*") if p.suffix.lower() in {".jpg", ".jpeg", ".png"})[:count]
    if not files:
        return None
    images = []
    for f in files:
        with Image.open(f) as image:
            images.append(transform(image.convert("RGB")))
    while len(images) < count:
        images += images[: count - len(images)]
    return torch.stack(images)


def main(argv: list[str] | None = None) -> int:
    parser = add_config_args(
        argparse.ArgumentParser(prog="python finetune/export.py", description=__doc__.splitlines()[0],
                                formatter_class=HelpFormatter),
        config_required=False,
        config_help="TAO experiment spec (optional for the toolkit's own checkpoints, which record their model "
                    "and preprocessing; needed for SOLIDER-REID / TAO checkpoints; default: none)")
    parser.add_argument("--checkpoint", metavar="PATH",
                        help="fine-tuned model: the toolkit's model.safetensors (or its folder), SOLIDER-REID or "
                             "TAO .pth (these need --config); default: export.checkpoint")
    parser.add_argument("--onnx-file", metavar="PATH",
                        help="output .onnx path (default: export.onnx_file, else <results_dir>/export/model.onnx)")
    parser.add_argument("--fp16", action="store_true", help="half-precision weights and arithmetic in the graph")
    parser.add_argument("--overwrite", "--force", dest="overwrite", action="store_true",
                        help="replace an existing ONNX file / config snippet (the old ones are moved aside)")
    parser.add_argument("--opset", type=int, default=DEFAULT_OPSET, help="ONNX opset (>= 17)")
    parser.add_argument("--verify-images", metavar="DIR",
                        help="folder of real images for the parity check (default: the config's query folder, "
                             "if any)")
    parser.add_argument("--no-verify", action="store_true", help="skip the onnxruntime parity check")
    add_neck_feat_argument(parser)
    parser.add_argument("--allow-partial", action="store_true",
                        help="load a checkpoint whose keys do not all match (missing/unexpected keys are listed)")
    args = parser.parse_args(argv)
    cfg = parse_config_from_args(FinetuneConfig, args)

    checkpoint = args.checkpoint or cfg.export.checkpoint
    if checkpoint is None:
        raise SystemExit("config error: export.checkpoint is not set (or pass --checkpoint)")
    out_dir = Path(cfg.export.results_dir or Path(cfg.results_dir) / "export")
    onnx_file = Path(args.onnx_file or cfg.export.onnx_file or out_dir / "model.onnx")
    snippet = snippet_path(onnx_file)
    if args.opset < DEFAULT_OPSET:
        raise SystemExit(f"--opset {args.opset}: the exported graph needs opset >= {DEFAULT_OPSET}")
    if not args.dry_run:
        check_writable(onnx_file.parent, "finetune/export.py")
    refuse_or_move_aside([onnx_file, snippet], args.overwrite, "finetune/export.py", move=not args.dry_run)
    if args.dry_run:
        print(f"would export {checkpoint} -> {onnx_file} (+ {snippet.name})")
        return 0

    from soliderkit.finetune.extractor import config_given, load_for_cli  # after argument checks: imports timm

    loaded = load_for_cli(checkpoint, cfg, config_given=config_given(args),
                          allow_partial=args.allow_partial, config_key="export.checkpoint",
                          neck_feat=args.neck_feat)
    model, model_cfg, pre = loaded.model, loaded.model_config, loaded.preprocessing
    size, mean, std = pre.input_size, list(pre.pixel_mean), list(pre.pixel_std)
    print(f"exporting {loaded.checkpoint.name}: {pre.describe()} (flip averaging is not part of the graph)")
    device = torch.device(f"cuda:{cfg.export.gpu_id}" if torch.cuda.is_available() else "cpu")
    metadata = {"producer": "solider-reid-toolkit finetune/export.py", "checkpoint": str(checkpoint),
                "backbone": model_cfg.backbone, "embedding_dim": model.embedding_dim,
                "input_size": json.dumps(list(size)), "pixel_mean": json.dumps(list(mean)),
                "pixel_std": json.dumps(list(std)), "color_order": "RGB", "neck_feat": model_cfg.neck_feat,
                "semantic_weight": model_cfg.semantic_weight, "fp16": json.dumps(args.fp16),
                "interpolation": pre.interpolation}

    with atomic_path(onnx_file) as tmp:
        export_onnx(model, tmp, input_size=size, opset=args.opset, fp16=args.fp16, device=device,
                    metadata=metadata)
        interface = check_onnx(tmp)
        print(f"onnx.checker passed: opset {interface['opset']}, inputs {interface['inputs']}, "
              f"outputs {interface['outputs']}")
        if not args.no_verify:
            generator = torch.Generator().manual_seed(0)
            batches = {f"random batch {b}": torch.randn(b, 3, *size, generator=generator) for b in (1, 8)}
            real = _real_images(args.verify_images or cfg.inference.query_dataset or cfg.dataset.query_dataset_dir,
                                pre.transform())
            if real is not None:
                batches.update({"real batch 1": real[:1], "real batch 8": real})
            results = compare_with_pytorch(tmp, model, batches)
            for name, r in results.items():
                print(f"onnxruntime vs PyTorch, {name}: max abs diff {r['max_abs_diff']:.3g}, "
                      f"min cosine {r['min_cosine']:.7f}")
            failures = parity_failures(results, args.fp16)
            if failures:
                raise SystemExit("ONNX parity check failed (nothing written): " + "; ".join(failures))
            if real is None:
                print("no real images found for the parity check (--verify-images DIR); random images only")
    text = nvdcf_reid_config(onnx_file.name, feature_size=model.embedding_dim, input_size=size, mean=mean, std=std,
                             fp16=args.fp16)
    atomic_write_text(snippet, text)
    warning = deepstream_preprocessing(mean, std)["warning"]
    if warning:
        print(f"WARNING: {warning}")
    print(f"wrote {onnx_file} ({onnx_file.stat().st_size / 1e6:.1f} MB) and {snippet}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
