"""Fine-tune experiment schema: the TAO ReIdentificationNet (Transformer) spec, read verbatim.

Field names, types and defaults follow TAO's re-identification ``default_config.py``
(nvidia_tao_core/config/re_identification, formerly nvidia_tao_pytorch/cv/re_identification/
config), so an unmodified TAO Swin spec loads. TAO fields that do nothing for Swin backbones are
accepted with a one-line notice (``no_effect``). Fields TAO lacks are marked ``EXTENSION``.
"""
from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import Literal, get_args

from soliderkit.backbone.registry import INPUT_MULTIPLE, ArchName
from soliderkit.config import option, require

# Which side of the BNNeck the test-time embedding is taken from (model.neck_feat, --neck-feat).
NeckFeat = Literal["before", "after"]
NECK_FEATS: tuple[str, ...] = get_args(NeckFeat)


def add_neck_feat_argument(parser: argparse.ArgumentParser) -> None:
    """``--neck-feat`` of the tools that embed with a checkpoint (evaluate, inference, export)."""
    parser.add_argument("--neck-feat", choices=NECK_FEATS, default=None,
                        help="the embedding before or after the BNNeck (default: the checkpoint's model.neck_feat; "
                             "SOLIDER-REID tests before it, TAO after)")


_TAO_COMPAT = "accepted for TAO spec compatibility"
_LAUNCHER = "processes and GPUs come from `accelerate launch` (--num_processes, --gpu_ids, --num_machines)"
# Why each TAO field does nothing here (checked against TAO's model/backbones/baseline.py,
# model/build_nn_model.py, model/pl_reid_model.py and utils/reid_metric.py).
_WHY = {
    "last_stride": "Swin downsamples by fixed patch merging; TAO reads last_stride only for ResNet",
    "pretrain_hw_ratio": "TAO uses it only to resize ViT position embeddings on its JPM path; "
                         "Swin uses relative position bias",
    "cos_layer": "TAO stores it but never reads it; margin-based heads are chosen by model.id_loss_type",
    "stride_size": "Swin's patch size is fixed at 4; TAO passes stride_size only to its ViT/JPM path",
    "gem_pooling": "TAO accepts but ignores it; features are average-pooled",
    "stem_conv": "TAO accepts but ignores it; Swin keeps its patch embedding",
    "jpm": "the jigsaw patch module needs a ViT backbone, so only false is allowed",
    "jpm_part": "only used by TAO's JPM branch (model.jpm), which needs a ViT backbone",
    "sie": "side-information embeddings exist only on TAO's ViT path; its Swin path ignores them",
    "lr_monitor": "only a plateau scheduler reads a monitored metric; these LR schedules are fixed",
    "num_query": "the number of queries is counted from the query set",
    "trt_engine": "TensorRT engines belong to TAO Deploy; this toolkit runs PyTorch checkpoints",
    "encryption_key": "checkpoints are written unencrypted",
    "model_name": "TAO's model-agnostic launcher field",
}
_WHY = {k: f"{v}; {_TAO_COMPAT}" for k, v in _WHY.items()}
_WHY["launcher"] = _LAUNCHER


def _in_unit(x: float, *, closed_right: bool = True) -> bool:
    return 0.0 <= x <= 1.0 if closed_right else 0.0 <= x < 1.0


@dataclass
class ModelConfig:
    """Backbone, neck and loss choices (TAO ReIDModelConfig)."""

    # Swin variant (TAO's ResNet backbones are not supported here)
    backbone: ArchName = option("swin_tiny_patch4_window7_224")
    last_stride: int = option(1, no_effect=_WHY["last_stride"])
    # checkpoint layout: "imagenet" = official Swin release (keys converted), "self" = our/SOLIDER pretraining
    pretrain_choice: Literal["imagenet", "self"] = option("imagenet")
    # backbone weights to start from; null = random init (existence is checked when the model is built)
    pretrained_model_path: str | None = option(None)
    # image channels: only 3 (RGB); also the exported ONNX input shape
    input_channels: int = option(3)
    input_width: int = option(128)  # network input width in pixels (multiple of INPUT_MULTIPLE = 32)
    input_height: int = option(256)  # network input height in pixels (multiple of INPUT_MULTIPLE = 32)
    # "bnneck": BatchNorm between embedding and classifier; "no": none
    neck: Literal["bnneck", "no"] = option("bnneck")
    feat_dim: int = option(256)  # embedding size after the reduction layer (when reduce_feat_dim)
    # embedding returned at test time: before or after the BN neck
    neck_feat: NeckFeat = option("after")
    # metric-learning loss(es) added to the ID loss
    metric_loss_type: Literal["triplet", "center", "triplet_center"] = option("triplet")
    with_center_loss: bool = option(False)  # add a center loss (metric_loss_type center/triplet_center)
    with_flip_feature: bool = option(False)  # test time: sum embeddings of the image and its mirror
    label_smooth: bool = option(True)  # label-smoothed cross-entropy for the ID loss
    pretrain_hw_ratio: float = option(2.0, no_effect=_WHY["pretrain_hw_ratio"])
    # identity classifier: plain linear ("softmax") or a margin-based head
    id_loss_type: Literal["softmax", "arcface", "cosface", "amsoftmax", "circle"] = option("softmax")
    id_loss_weight: float = option(1.0)  # weight of the ID (classification) loss
    triplet_loss_weight: float = option(1.0)  # weight of the triplet loss
    no_margin: bool = option(False)  # soft-margin triplet loss (train.optim.triplet_loss_margin unused)
    cos_layer: bool = option(False, no_effect=_WHY["cos_layer"])
    dropout_rate: float = option(0.0)  # dropout on the embedding before the classifier
    reduce_feat_dim: bool = option(False)  # project the backbone feature to feat_dim (linear layer)
    drop_path: float = option(0.1)  # stochastic-depth rate of the Swin blocks
    drop_out: float = option(0.0)  # dropout rate inside the Swin blocks
    att_drop_rate: float = option(0.0)  # attention-weight dropout inside the Swin blocks
    stride_size: list[int] = option([16, 16], no_effect=_WHY["stride_size"])
    gem_pooling: bool = option(False, no_effect=_WHY["gem_pooling"])
    stem_conv: bool = option(False, no_effect=_WHY["stem_conv"])
    jpm: bool = option(False, no_effect=_WHY["jpm"])
    shift_num: int = option(5, no_effect=_WHY["jpm_part"])
    shuffle_group: int = option(2, no_effect=_WHY["jpm_part"])
    devide_length: int = option(4, no_effect=_WHY["jpm_part"])
    re_arrange: bool = option(True, no_effect=_WHY["jpm_part"])
    sie_coe: float = option(3.0, no_effect=_WHY["sie"])
    sie_camera: bool = option(False, no_effect=_WHY["sie"])
    sie_view: bool = option(False, no_effect=_WHY["sie"])
    # SOLIDER semantic controller λ given to the backbone (TAO default 1.0; SOLIDER-REID uses 0.2)
    semantic_weight: float = option(1.0)
    # EXTENSIONS (not in TAO):
    label_smooth_epsilon: float = option(0.1)  # smoothing ε when label_smooth (TAO fixes 0.1)
    grad_checkpointing: bool = option(False)  # recompute Swin blocks in backward to save memory
    # Train the backbone's semantic controller (the λ -> per-channel scale/shift layers)? false is
    # the reference: SOLIDER-REID model/backbones/swin_transformer.py and TAO's
    # model/backbones/swin_transformer.py set requires_grad=False on semantic_embed_w/b, so the
    # controller keeps its pretrained values; true trains it with the rest of the network.
    train_semantic_controller: bool = option(False)

    def validate(self) -> None:
        for key in ("input_width", "input_height"):
            size = getattr(self, key)
            require(size > 0 and size % INPUT_MULTIPLE == 0, key,
                    f"must be a positive multiple of {INPUT_MULTIPLE} (Swin downsamples by {INPUT_MULTIPLE})")
        require(self.input_channels == 3, "input_channels", "only 3-channel (RGB) input is supported")
        require(self.feat_dim > 0, "feat_dim", "must be positive")
        require(not self.jpm, "jpm", "the JPM branch is not available for Swin backbones; set it to false")
        require(self.with_center_loss or self.metric_loss_type != "center", "metric_loss_type",
                "'center' needs model.with_center_loss: true", "with_center_loss")
        require(not self.with_center_loss or "center" in self.metric_loss_type, "with_center_loss",
                "a center loss needs metric_loss_type 'center' or 'triplet_center'", "metric_loss_type")
        require(_in_unit(self.semantic_weight), "semantic_weight", "must be in [0, 1]")
        require(_in_unit(self.label_smooth_epsilon, closed_right=False), "label_smooth_epsilon",
                "must be in [0, 1)")
        for key in ("dropout_rate", "drop_path", "drop_out", "att_drop_rate"):
            require(_in_unit(getattr(self, key), closed_right=False), key, "must be in [0, 1)")
        for key in ("id_loss_weight", "triplet_loss_weight"):
            require(getattr(self, key) >= 0, key, "must be >= 0")


@dataclass
class OptimConfig:
    """Optimizer, LR schedule and loss hyper-parameters (TAO OptimConfig)."""

    ALIASES = {"steps": "lr_steps"}  # TAO 5.0 specs call lr_steps `steps`

    name: Literal["SGD", "Adam", "AdamW"] = option("Adam")  # torch.optim optimizer
    lr_monitor: str = option("val_loss", no_effect=_WHY["lr_monitor"])
    lr_steps: list[int] = option([40, 70])  # multi-step schedule: epochs where the LR is multiplied by gamma
    gamma: float = option(0.1)  # multi-step LR decay factor
    bias_lr_factor: float = option(1.0)  # LR multiplier for bias parameters
    weight_decay: float = option(0.0005)  # weight decay for weights
    weight_decay_bias: float = option(0.0005)  # weight decay for biases
    warmup_factor: float = option(0.01)  # multi-step schedule: starting LR as a fraction of base_lr
    warmup_iters: int = option(10)  # multi-step schedule: warm-up length in epochs (stepped once per epoch)
    warmup_epochs: int = option(20)  # cosine schedule: linear warm-up length in epochs
    # "cosine": linear warm-up then cosine decay; "linear"/"constant": multi-step with that warm-up shape
    warmup_method: Literal["linear", "constant", "cosine"] = option("linear")
    base_lr: float = option(0.00035)  # peak learning rate
    momentum: float = option(0.9)  # SGD momentum
    center_loss_weight: float = option(0.0005)  # weight of the center loss
    center_lr: float = option(0.5)  # SGD learning rate of the class centers
    triplet_loss_margin: float = option(0.3)  # hard-margin triplet margin (unless model.no_margin)
    large_fc_lr: bool = option(False)  # classifier parameters get 2x base_lr
    cosine_margin: float = option(0.5)  # margin m of arcface/cosface/amsoftmax/circle heads
    cosine_scale: float = option(30.0)  # scale s of arcface/cosface/amsoftmax/circle heads
    trp_l2: bool = option(False)  # L2-normalise embeddings before the triplet loss
    # EXTENSIONS (not in TAO):
    # which parameters count as biases (base_lr * bias_lr_factor, weight_decay_bias): "contains" is
    # the reference (SOLIDER-REID solver/make_optimizer.py and TAO pl_reid_model.py test
    # '"bias" in name', which also takes every relative_position_bias_table); "suffix" takes only
    # names ending in "bias"
    bias_param_rule: Literal["contains", "suffix"] = option("contains")

    def validate(self) -> None:
        require(self.base_lr > 0, "base_lr", "must be > 0")
        require(0 < self.warmup_factor <= 1, "warmup_factor", "must be in (0, 1]")
        require(0 < self.gamma <= 1, "gamma", "must be in (0, 1]")
        require(all(s > 0 for s in self.lr_steps) and self.lr_steps == sorted(set(self.lr_steps)), "lr_steps",
                "must be increasing positive epoch numbers")
        for key in ("bias_lr_factor", "cosine_scale"):
            require(getattr(self, key) > 0, key, "must be > 0")
        for key in ("weight_decay", "weight_decay_bias", "center_loss_weight", "center_lr",
                    "triplet_loss_margin", "cosine_margin", "warmup_iters", "warmup_epochs"):
            require(getattr(self, key) >= 0, key, "must be >= 0")
        require(_in_unit(self.momentum, closed_right=False), "momentum", "must be in [0, 1)")


@dataclass
class DatasetConfig:
    """Data locations, batching and augmentation (TAO ReIDDatasetConfig)."""

    # training images; EXTENSION: a list of folders trains on their union (identities kept apart)
    train_dataset_dir: str | list[str] | None = option(None)
    # gallery / query images for validation; lists of the same length pair query i with
    # gallery i (several test sets at once, e.g. the card's Market-1501 + AI City test rows)
    test_dataset_dir: str | list[str] | None = option(None)
    query_dataset_dir: str | list[str] | None = option(None)
    # classifier size for evaluate/inference/export models (training counts its identities itself)
    num_classes: int = option(751)
    batch_size: int = option(64)  # training images per step, summed over all processes (TAO semantics)
    val_batch_size: int = option(128)  # images per step when extracting embeddings, per process
    num_workers: int = option(8)  # data-loading worker processes per training process
    pixel_mean: list[float] = option([0.485, 0.456, 0.406])  # per-channel normalisation mean (RGB, 0-1 scale)
    pixel_std: list[float] = option([0.226, 0.226, 0.226])  # per-channel normalisation std (RGB, 0-1 scale)
    padding: int = option(10)  # pixels of padding before the random crop
    prob: float = option(0.5)  # horizontal-flip probability
    re_prob: float = option(0.5)  # random-erasing probability
    # losses used: ID only, triplet only, or both (batches always come from the identity sampler)
    sampler: Literal["softmax", "triplet", "softmax_triplet"] = option("softmax_triplet")
    num_instances: int = option(4)  # images per identity in a batch (identity sampler)
    # EXTENSIONS (not in TAO):
    # how identities and cameras are read (soliderkit.reid.datasets parsers): Market-style file names
    # ("market1501", "three_folders") or MSMT17 list files ("msmt17")
    dataset_kind: Literal["market1501", "msmt17", "three_folders"] = option("market1501")
    # resize filter of test / validation images: "bilinear" is the reference (SOLIDER-REID
    # datasets/make_dataloader.py and TAO dataloader/transforms.py: T.Resize with its default);
    # "bicubic" matches the training resize (both references train with interpolation=3, bicubic)
    test_interpolation: Literal["bilinear", "bicubic"] = option("bilinear")
    # every image is checked before step one; unreadable ones stop the run (listed) unless this
    # is true, when they are left out and counted
    skip_unreadable_images: bool = option(False)
    # share of training images given a random colour jitter (after the flip); 0 is the reference
    # (neither SOLIDER-REID nor TAO jitters colours)
    color_jitter_prob: float = option(0.0)
    # jitter strengths: brightness, contrast, saturation, hue (torchvision ColorJitter)
    color_jitter: list[float] = option([0.2, 0.15, 0.1, 0.0])

    def validate(self) -> None:
        for key in ("num_classes", "batch_size", "val_batch_size", "num_instances"):
            require(getattr(self, key) >= 1, key, "must be >= 1")
        require(self.num_workers >= 0, "num_workers", "must be >= 0")
        require(self.padding >= 0, "padding", "must be >= 0")
        require(self.batch_size % self.num_instances == 0, "batch_size",
                f"must be a multiple of dataset.num_instances ({self.num_instances})", "num_instances")
        require(len(self.pixel_mean) == 3, "pixel_mean", "needs 3 values (RGB)")
        require(len(self.pixel_std) == 3 and all(s > 0 for s in self.pixel_std), "pixel_std",
                "needs 3 positive values (RGB)")
        for key in ("prob", "re_prob", "color_jitter_prob"):
            require(_in_unit(getattr(self, key)), key, "must be a probability in [0, 1]")
        require(len(self.color_jitter) == 4 and all(v >= 0 for v in self.color_jitter) and self.color_jitter[3] <= 0.5,
                "color_jitter", "needs 4 values >= 0 (brightness, contrast, saturation, hue; hue <= 0.5)")
        if isinstance(self.train_dataset_dir, list):
            require(len(self.train_dataset_dir) > 0, "train_dataset_dir", "an empty list names no data")
        if isinstance(self.query_dataset_dir, list) or isinstance(self.test_dataset_dir, list):
            lengths = [len(d) if isinstance(d, list) else 1 for d in (self.query_dataset_dir, self.test_dataset_dir)]
            require(lengths[0] == lengths[1] and lengths[0] > 0, "query_dataset_dir",
                    f"query and test folder lists pair up in order: give as many of each (got {lengths[0]} "
                    f"query and {lengths[1]} test)", "test_dataset_dir")


@dataclass
class ReRankingConfig:
    """k-reciprocal re-ranking at evaluation (TAO ReIDReRankingConfig)."""

    re_ranking: bool = option(False)  # re-rank the query-gallery distances
    k1: int = option(20)  # k-reciprocal neighbourhood size
    k2: int = option(6)  # neighbourhood size for local query expansion
    lambda_value: float = option(0.3)  # weight of the original distance against the Jaccard distance
    max_rank: int = option(10)  # CMC curve is reported up to this rank
    num_query: int = option(10, no_effect=_WHY["num_query"])

    def validate(self) -> None:
        for key in ("k1", "k2", "max_rank"):
            require(getattr(self, key) >= 1, key, "must be >= 1")
        require(_in_unit(self.lambda_value), "lambda_value", "must be in [0, 1]")


@dataclass
class CudnnConfig:
    """cuDNN flags (TAO CuDNNConfig)."""

    benchmark: bool = option(False)  # let cuDNN pick the fastest kernels (non-deterministic)
    deterministic: bool = option(True)  # request deterministic cuDNN kernels


@dataclass
class TrainConfig:
    """Training loop (TAO TrainConfig + ReIDTrainExpConfig)."""

    num_gpus: int = option(1, no_effect=_WHY["launcher"])
    gpu_ids: list[int] = option([0], no_effect=_WHY["launcher"])
    num_nodes: int = option(1, no_effect=_WHY["launcher"])
    seed: int = option(1234)  # random seed; negative = do not seed
    cudnn: CudnnConfig = option(CudnnConfig())
    num_epochs: int = option(10)  # training epochs
    checkpoint_interval: int = option(1)  # save a checkpoint every N epochs
    validation_interval: int = option(1)  # evaluate on query/gallery every N epochs
    resume_training_checkpoint_path: str | None = option(None)  # checkpoint to resume training from
    results_dir: str | None = option(None)  # training outputs; null = <results_dir>/train
    optim: OptimConfig = option(OptimConfig())
    grad_clip: float = option(0.0)  # max gradient norm; 0 = no clipping
    # EXTENSIONS (not in TAO):
    # autocast precision for training (Accelerate): bf16, or fp16 with a dynamic loss scale (GradScaler;
    # a step whose gradients overflow is skipped by it, not counted as non-finite); on the CPU fp16 trains in float32
    mixed_precision: Literal["no", "fp16", "bf16"] = option("no")
    # torch.compile the training forward (and backward); the same losses as eager, faster after the first steps
    compile: bool = option(False)
    # torch.compile mode: default, reduce-overhead (CUDA graphs), max-autotune, max-autotune-no-cudagraphs
    compile_mode: Literal["default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"] = \
        option("default")
    # steps between reads of the losses, images/s, TFLOP/s (TensorBoard, progress bar) and of the
    # non-finite and stop checks: the loop's one host sync; with several processes SIGTERM stops here
    log_every: int = option(20)
    gradient_accumulation_steps: int = option(1)  # micro-batches accumulated per optimizer step
    # checkpoints kept: the newest N (null = every checkpoint, as TAO) plus those of every K-th epoch
    keep_last: int | None = option(None)
    keep_every: int | None = option(None)
    # consecutive non-finite-loss steps skipped before aborting; 0 = abort at the first
    max_nan_steps: int = option(0)

    def validate(self) -> None:
        for key in ("num_epochs", "checkpoint_interval", "validation_interval",
                    "gradient_accumulation_steps", "log_every"):
            require(getattr(self, key) >= 1, key, "must be >= 1")
        require(self.keep_last is None or self.keep_last >= 1, "keep_last",
                "must be >= 1 (the newest checkpoint is what --resume uses), or null to keep all")
        require(self.keep_every is None or self.keep_every >= 1, "keep_every", "must be >= 1 or null")
        require(self.max_nan_steps >= 0, "max_nan_steps", "must be >= 0")
        require(self.grad_clip >= 0, "grad_clip", "must be >= 0 (0 disables clipping)")


@dataclass
class EvaluateConfig:
    """Stand-alone evaluation (TAO ReIDEvalExpConfig)."""

    num_gpus: int = option(1, no_effect=_WHY["launcher"])
    gpu_ids: list[int] = option([0], no_effect=_WHY["launcher"])
    num_nodes: int = option(1, no_effect=_WHY["launcher"])
    checkpoint: str | None = option(None)  # model checkpoint to evaluate (required by the evaluate task)
    trt_engine: str | None = option(None, no_effect=_WHY["trt_engine"])
    results_dir: str | None = option(None)  # evaluation outputs; null = <results_dir>/evaluate
    output_sampled_matches_plot: str | None = option(None)  # ranked-results grid PNG; null = <evaluate results>/sampled_matches.png
    output_cmc_curve_plot: str | None = option(None)  # CMC curve PNG; null = <evaluate results>/cmc_curve.png
    test_dataset: str | None = option(None)  # gallery folder; null = dataset.test_dataset_dir
    query_dataset: str | None = option(None)  # query folder; null = dataset.query_dataset_dir
    # EXTENSION: more evaluation targets, each "NAME=ROOT" (a Market-1501 / MSMT17 root) or
    # "NAME=QUERY_DIR,GALLERY_DIR" ("NAME=" optional), as finetune/evaluate.py --target; every target
    # is written to its own <results>/<NAME>/ folder, plus one summary table
    targets: list[str] = option([])


@dataclass
class InferenceConfig:
    """Embedding extraction (TAO ReIDInferenceExpConfig)."""

    num_gpus: int = option(1, no_effect=_WHY["launcher"])
    gpu_ids: list[int] = option([0], no_effect=_WHY["launcher"])
    num_nodes: int = option(1, no_effect=_WHY["launcher"])
    checkpoint: str | None = option(None)  # model checkpoint (required by the inference task)
    trt_engine: str | None = option(None, no_effect=_WHY["trt_engine"])
    results_dir: str | None = option(None)  # inference outputs; null = <results_dir>/inference
    output_file: str | None = option(None)  # JSON file for the embeddings; null = in results_dir
    test_dataset: str | None = option(None)  # gallery folder; null = dataset.test_dataset_dir
    query_dataset: str | None = option(None)  # query folder; null = dataset.query_dataset_dir


@dataclass
class ExportConfig:
    """ONNX export (TAO ReIDExportExpConfig)."""

    results_dir: str | None = option(None)  # export outputs; null = <results_dir>/export
    checkpoint: str | None = option(None)  # model checkpoint to export (required by the export task)
    onnx_file: str | None = option(None)  # output .onnx path; null = <export results>/model.onnx
    gpu_id: int = option(0)  # CUDA device index used while tracing (CPU when no GPU is present)

    def validate(self) -> None:
        require(self.gpu_id >= 0, "gpu_id", "must be >= 0")


@dataclass
class WandBConfig:
    """TAO's Weights & Biases block, honoured by ``finetune/run.py`` through Accelerate's W&B tracker
    (beside TensorBoard) when ``enable`` is true and the ``wandb`` package is installed (it is not a
    dependency: ``pip install wandb``). Enabled without ``wandb`` installed, the run warns and its
    resolved ``config.yaml`` records ``enable: false``."""

    # log to W&B; EXTENSION difference: default false (TAO: true), as W&B is optional here
    enable: bool = option(False)
    project: str = option("TAO Toolkit")  # W&B project
    entity: str | None = option("")  # W&B team or user; "" or null = the logged-in user's default
    tags: list[str] = option(["tao-toolkit"])  # W&B run tags
    reinit: bool = option(False)  # wandb.init(reinit=...)
    sync_tensorboard: bool = option(False)  # also upload the TensorBoard events
    save_code: bool = option(False)  # wandb.init(save_code=...)
    name: str = option("TAO Toolkit Training")  # W&B run name


@dataclass
class FinetuneConfig:
    """The whole fine-tune experiment (TAO ExperimentConfig for re_identification)."""

    # root for all outputs (TAO's default "/results" is not writable on most machines)
    results_dir: str = option("results/finetune")
    encryption_key: str | None = option(None, no_effect=_WHY["encryption_key"])
    model_name: str | None = option(None, no_effect=_WHY["model_name"])
    wandb: WandBConfig = option(WandBConfig())  # Weights & Biases logging (see WandBConfig)
    model: ModelConfig = option(ModelConfig())
    dataset: DatasetConfig = option(DatasetConfig())
    train: TrainConfig = option(TrainConfig())
    evaluate: EvaluateConfig = option(EvaluateConfig())
    inference: InferenceConfig = option(InferenceConfig())
    export: ExportConfig = option(ExportConfig())
    re_ranking: ReRankingConfig = option(ReRankingConfig())
