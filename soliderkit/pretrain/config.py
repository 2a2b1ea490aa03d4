"""Pretraining experiment schema: DINO self-distillation of a Swin backbone + SOLIDER's
semantic controller.

Defaults follow the SOLIDER recipe (its ``run_solider.sh`` / ``main_solider.py`` arguments,
which inherit DINO's ``main_dino.py`` defaults): 100 epochs, 48 images per GPU on 8 GPUs,
256x128 global crops, 128x64 local crops. The SOLIDER/DINO argument name is noted where ours
differs.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

from soliderkit.backbone.registry import INPUT_MULTIPLE, ArchName
from soliderkit.config import option, require


@dataclass
class ModelConfig:
    """Student/teacher backbone and DINO projection head."""

    arch: ArchName = option("swin_tiny_patch4_window7_224")  # Swin variant (built at data.global_crop_size)
    drop_path_rate: float = option(0.1)  # stochastic depth of the student (teacher uses none)
    grad_checkpointing: bool = option(False)  # recompute Swin blocks in backward to save memory
    out_dim: int = option(65536)  # DINO head output dimension (number of prototypes)
    head_hidden_dim: int = option(2048)  # width of the DINO head's hidden MLP layers
    bottleneck_dim: int = option(256)  # DINO head bottleneck before the weight-normalised last layer
    norm_last_layer: bool = option(True)  # weight-normalise the head's last layer with fixed norm
    use_bn_in_head: bool = option(False)  # BatchNorm in the DINO head's MLP
    # start student and teacher backbones from this toolkit backbone (.safetensors), e.g. the
    # phase-1 DINO run's backbone.safetensors for SOLIDER's continuation; null = random init.
    # A fresh run (new schedules, step 0), unlike train.resume (SOLIDER: init_model)
    init_from: str | None = option(None)
    # start the DINO heads from a previous run's dino_head.safetensors (phase 1 of the two-phase
    # recipe); null = fresh heads. The center comes with it only when model.init_center=saved
    init_head_from: str | None = option(None)
    # start the student (backbone + DINO head) from a previous run's student.safetensors, while the
    # teacher starts from init_from / init_head_from. The reference: SOLIDER's resume_solider.sh
    # (main_solider.py, utils.restart_from_checkpoint) loads the phase-1 *student* into the student
    # and the phase-1 teacher into the teacher. null = the student starts as a copy of the teacher
    init_student_from: str | None = option(None)
    # DINO center at the start of a run given init_head_from: "zero" is the reference (SOLIDER's
    # restart_from_checkpoint does not restore dino_loss, so phase 2 starts with center 0);
    # "saved" = the center saved with init_head_from's head
    init_center: Literal["zero", "saved"] = option("zero")

    def validate(self) -> None:
        require(0 <= self.drop_path_rate < 1, "drop_path_rate", "must be in [0, 1)")
        for key in ("init_from", "init_head_from", "init_student_from"):
            path = getattr(self, key)
            require(path is None or path.endswith(".safetensors"), key,
                    "must name a .safetensors file written by pretrain/run.py (or null)")
        for key in ("out_dim", "head_hidden_dim", "bottleneck_dim"):
            require(getattr(self, key) >= 1, key, "must be >= 1")
        require(self.init_student_from is None or self.init_from is not None, "init_student_from",
                "needs model.init_from (the teacher's backbone of the same run)", "init_from")


@dataclass
class DataConfig:
    """Unlabelled person images and the multi-crop augmentation."""

    # "shards": webdataset tar shards; "folder": a directory tree of images
    kind: Literal["shards", "folder"] = option("shards")
    # shard glob/brace pattern or image folder (required to train) (SOLIDER: data_path)
    # (kind folder: every image below it, recursively)
    path: str | None = option(None)
    batch_size_per_device: int = option(48)  # images per process per step (SOLIDER: batch_size_per_gpu)
    num_workers: int = option(16)  # data-loading worker processes per training process
    # data.kind=folder: every image is checked before step one; unreadable ones stop the run
    # (listed) unless this is true, when they are left out and counted. Shards skip and count
    # bad samples as they stream.
    skip_unreadable_images: bool = option(False)
    shuffle_buffer: int = option(10000)  # kind shards: samples held in the streaming shuffle buffer
    batches_per_epoch: int | None = option(None)  # steps per epoch; null = one pass over the data
    # (height, width) of the 2 global views and of the model input (SOLIDER: height, width)
    global_crop_size: tuple[int, int] = option((256, 128))
    # area range of the global random-resized crops
    global_crop_scale: tuple[float, float] = option((0.8, 1.0))
    # (height, width) of the local views (SOLIDER: crop_height, crop_width)
    local_crop_size: tuple[int, int] = option((128, 64))
    # area range of the local random-resized crops
    local_crop_scale: tuple[float, float] = option((0.05, 0.8))
    local_crops_number: int = option(8)  # local views per image; 0 disables multi-crop
    # width/height range of the random-resized crops as multiples of each view's own
    # width/height: 256x128 and 128x64 views -> 0.4-0.6, SOLIDER's choice for persons
    crop_aspect_ratio_scale: tuple[float, float] = option((0.8, 1.2))
    # probability of colour jitter on each view (DINO: 0.8)
    color_jitter_prob: float = option(0.8)
    # colour-jitter strengths: brightness, contrast, saturation, hue (torchvision ColorJitter; DINO: 0.4 0.4 0.2 0.1)
    color_jitter: tuple[float, float, float, float] = option((0.4, 0.4, 0.2, 0.1))
    # probability of converting each view to grayscale (DINO: 0.2)
    grayscale_prob: float = option(0.2)
    # where the views are made: "cpu" is the reference (DataLoader workers decode and make every
    # view with PIL, as DINO / SOLIDER); "device" = workers only decode, and the crops, flip,
    # colour jitter, grayscale, blur, solarisation and normalisation of the whole batch run on the
    # training device (soliderkit.pretrain.device_multicrop: the same plan of random draws and
    # PIL's arithmetic; bench/bench_pipeline.py measures the CPU time saved)
    augment_on: Literal["cpu", "device"] = option("cpu")
    # decode a JPEG at 1/2, 1/4 or 1/8 size (libjpeg's DCT scaling) when every planned crop
    # still has at least its output's pixels there; false = always decode at full size (reference)
    decode_draft: bool = option(False)
    # per-channel normalisation mean (RGB, 0-1 scale)
    pixel_mean: tuple[float, float, float] = option((0.485, 0.456, 0.406))
    # per-channel normalisation std (RGB, 0-1 scale)
    pixel_std: tuple[float, float, float] = option((0.229, 0.224, 0.225))

    def validate(self) -> None:
        require(self.batch_size_per_device >= 1, "batch_size_per_device", "must be >= 1")
        require(self.num_workers >= 0, "num_workers", "must be >= 0")
        require(self.shuffle_buffer >= 0, "shuffle_buffer", "must be >= 0")
        require(self.batches_per_epoch is None or self.batches_per_epoch >= 1, "batches_per_epoch",
                "must be >= 1 (or null for one pass over the data)")
        for key in ("global_crop_size", "local_crop_size"):
            require(all(s > 0 and s % INPUT_MULTIPLE == 0 for s in getattr(self, key)), key,
                    f"height and width must be positive multiples of {INPUT_MULTIPLE} (Swin downsamples by it)")
        fits = all(lo <= hi for lo, hi in zip(self.local_crop_size, self.global_crop_size))
        require(fits, "local_crop_size", "must not exceed data.global_crop_size", "global_crop_size")
        for key in ("global_crop_scale", "local_crop_scale"):
            lo, hi = getattr(self, key)
            require(0 < lo <= hi <= 1, key, "must be [min, max] with 0 < min <= max <= 1")
        lo, hi = self.crop_aspect_ratio_scale
        require(0 < lo <= hi, "crop_aspect_ratio_scale", "must be [min, max] with 0 < min <= max")
        require(self.local_crops_number >= 0, "local_crops_number", "must be >= 0")
        require(all(s > 0 for s in self.pixel_std), "pixel_std", "must be positive")
        for key in ("color_jitter_prob", "grayscale_prob"):
            require(0 <= getattr(self, key) <= 1, key, "must be a probability in [0, 1]")
        require(all(x >= 0 for x in self.color_jitter) and self.color_jitter[3] <= 0.5, "color_jitter",
                "must be [brightness, contrast, saturation, hue], each >= 0, hue <= 0.5")


@dataclass
class DinoConfig:
    """Self-distillation: teacher EMA, temperatures and centering."""

    momentum_teacher: float = option(0.996)  # starting teacher EMA momentum; rises to 1 on a cosine schedule
    warmup_teacher_temp: float = option(0.04)  # teacher temperature at the start of its warm-up
    teacher_temp: float = option(0.04)  # teacher temperature after warm-up
    warmup_teacher_temp_epochs: int = option(0)  # epochs of linear teacher-temperature warm-up
    student_temp: float = option(0.1)  # student softmax temperature
    # how the teacher-temperature warm-up advances: "epoch" is the reference (DINO / SOLIDER
    # DINOLoss.teacher_temp_schedule, one value per epoch); "iteration" = a linear ramp per step.
    # No effect when warmup_teacher_temp_epochs is 0 or both temperatures are equal
    teacher_temp_schedule: Literal["epoch", "iteration"] = option("epoch")
    center_momentum: float = option(0.9)  # EMA momentum of the teacher-output center

    def validate(self) -> None:
        require(0 <= self.momentum_teacher <= 1, "momentum_teacher", "must be in [0, 1]")
        require(0 <= self.center_momentum < 1, "center_momentum", "must be in [0, 1)")
        for key in ("warmup_teacher_temp", "teacher_temp", "student_temp"):
            require(getattr(self, key) > 0, key, "must be > 0")
        require(self.warmup_teacher_temp_epochs >= 0, "warmup_teacher_temp_epochs", "must be >= 0")


@dataclass
class SemanticConfig:
    """SOLIDER's semantic controller and part-classification loss."""

    # false = plain DINO as SOLIDER's main_dino.py: every view at λ=0, no clustering, no part
    # classifier, and the two lambda_* fields are not used
    enabled: bool = option(True)
    # λ values each image (all its views, in student and teacher) is conditioned on; SOLIDER
    # draws 0 or 1 with equal probability
    lambda_values: list[float] = option([0.0, 1.0])
    lambda_probs: list[float] = option([0.5, 0.5])  # probability of each λ value (sums to 1)
    num_parts: int = option(3)  # body-part clusters per image (SOLIDER: partnum)
    part_head_layers: int = option(3)  # linear layers of the part classifier (SOLIDER: parthead_nlayers)
    part_head_hidden_dim: int = option(2048)  # width of the part classifier's hidden layers
    # the part classifier: "solider" is the reference (main_solider.py: DINOHead(embed_dim,
    # partnum + 1, nlayers=parthead_nlayers) -- MLP, L2-normalised bottleneck, weight-normalised
    # last layer with fixed norm, so its logits are cosines -- built but never put in the optimizer:
    # a fixed random head the student learns to satisfy); "trained" = a plain GELU MLP trained
    # with the student (this toolkit's earlier behaviour)
    part_classifier: Literal["solider", "trained"] = option("solider")
    part_head_bottleneck_dim: int = option(256)  # part_classifier=solider: DINOHead bottleneck width
    # which part is blacked out in the masked copies: "batch" is the reference (main_solider.py:
    # one k = random.randint(1, partnum) for the whole batch); "view" = one non-empty part drawn
    # per view
    mask_part: Literal["batch", "view"] = option("batch")
    # how tokens are clustered: "sklearn" is the reference (utils.get_mask: per view on the CPU,
    # KMeans(2) on token norms then KMeans(partnum) on the foreground, scikit-learn with
    # random_state=0); "batched" = this toolkit's exact 2-means + Lloyd k-means for the whole batch
    # in torch on the training device (bench/bench_clustering.py: 25x faster at batch 96)
    clustering: Literal["sklearn", "batched"] = option("sklearn")
    # clustering=batched: Lloyd iterations of the k-means on the foreground tokens
    kmeans_iters: int = option(10)
    # images whose foreground covers at most this fraction of tokens are left out of the part loss
    fg_ratio_threshold: float = option(0.5)
    loss_weight: float = option(1.0)  # weight of the part-classification loss (SOLIDER: semantic_loss)

    def validate(self) -> None:
        require(len(self.lambda_values) >= 1, "lambda_values", "needs at least one value")
        require(all(0 <= v <= 1 for v in self.lambda_values), "lambda_values", "values must be in [0, 1]")
        require(len(self.lambda_probs) == len(self.lambda_values), "lambda_probs",
                f"needs one probability per semantic.lambda_values entry ({len(self.lambda_values)})",
                "lambda_values")
        total = sum(self.lambda_probs)
        require(all(p >= 0 for p in self.lambda_probs) and math.isclose(total, 1.0, abs_tol=1e-6),
                "lambda_probs", f"must be non-negative and sum to 1 (they sum to {total:g})")
        require(self.num_parts >= 1, "num_parts", "must be >= 1")
        require(self.part_head_layers >= 1, "part_head_layers", "must be >= 1")
        require(self.part_head_hidden_dim >= 1, "part_head_hidden_dim", "must be >= 1")
        require(self.part_head_bottleneck_dim >= 1, "part_head_bottleneck_dim", "must be >= 1")
        require(self.kmeans_iters >= 1, "kmeans_iters", "must be >= 1")
        require(0 <= self.fg_ratio_threshold < 1, "fg_ratio_threshold", "must be in [0, 1)")
        require(self.loss_weight >= 0, "loss_weight", "must be >= 0")


@dataclass
class OptimConfig:
    """AdamW with linear warm-up + cosine decay of LR and weight decay."""

    lr: float = option(0.0005)  # peak LR for a total batch of 256; scaled linearly by (total batch / 256)
    min_lr: float = option(1e-6)  # LR at the end of the cosine decay
    warmup_epochs: int = option(10)  # epochs of linear LR warm-up from 0
    weight_decay: float = option(0.04)  # starting weight decay (cosine schedule)
    weight_decay_end: float = option(0.4)  # final weight decay
    clip_grad: float = option(3.0)  # per-parameter gradient-norm clip; 0 disables
    freeze_last_layer: int = option(1)  # epochs during which the DINO head's last layer is not updated
    # weight-decay the Swin relative-position bias tables? true is the reference (SOLIDER's and
    # DINO's utils.get_params_groups exempt only biases and 1-D parameters, so the 2-D tables
    # decay); false exempts them too, as Swin's own training recipe does (no_weight_decay_keywords)
    decay_position_tables: bool = option(True)
    epochs: int = option(100)  # training epochs

    def validate(self) -> None:
        require(self.lr > 0, "lr", "must be > 0")
        require(0 <= self.min_lr <= self.lr, "min_lr", "must be in [0, optim.lr]", "lr")
        require(self.epochs >= 1, "epochs", "must be >= 1")
        require(0 <= self.warmup_epochs <= self.epochs, "warmup_epochs", "must be in [0, optim.epochs]",
                "epochs")
        for key in ("weight_decay", "weight_decay_end", "clip_grad", "freeze_last_layer"):
            require(getattr(self, key) >= 0, key, "must be >= 0")


@dataclass
class TrainConfig:
    """Run control: precision, checkpoints, logging, resume."""

    # autocast precision (DINO trains in fp16, with a dynamic loss scale: Accelerate's GradScaler skips
    # a step whose gradients overflow, which is not counted as non-finite); on the CPU fp16 trains in float32
    mixed_precision: Literal["no", "fp16", "bf16"] = option("fp16")
    # torch.compile the student's and the teacher's forward (and the student's backward); the same
    # losses as eager, faster after the first steps (each crop size compiles once)
    compile: bool = option(False)
    # torch.compile mode: default, reduce-overhead (CUDA graphs), max-autotune, max-autotune-no-cudagraphs
    compile_mode: Literal["default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"] = \
        option("default")
    # a checkpoint is saved at every epoch end; keep the one of every N-th epoch (SOLIDER: saveckp_freq)
    checkpoint_every: int = option(5)
    keep_last: int = option(1)  # ... and the newest N checkpoints (an interrupted run's included)
    # log losses, images/s and TFLOP/s every N steps; also when the non-finite and (with several
    # processes) SIGTERM checks run: the loop's one host sync per N steps
    log_every: int = option(50)
    # checkpoint folder to continue from (same step, schedules, data epoch); "auto" = the
    # newest in results_dir/checkpoints, or a fresh start when there is none; null = fresh start
    resume: str | None = option(None)
    # consecutive non-finite-loss steps skipped before aborting; 0 = abort at the first
    max_nan_steps: int = option(0)

    def validate(self) -> None:
        require(self.checkpoint_every >= 1, "checkpoint_every", "must be >= 1")
        require(self.keep_last >= 1, "keep_last", "must be >= 1 (the newest checkpoint is what --resume uses)")
        require(self.log_every >= 1, "log_every", "must be >= 1")
        require(self.max_nan_steps >= 0, "max_nan_steps", "must be >= 0")


@dataclass
class KnnEvalConfig:
    """Periodic retrieval check of the teacher backbone on a labelled ReID set."""

    # Market-1501-layout root (query/ and bounding_box_test/); null disables
    dataset_dir: str | None = option(None)
    every_epochs: int = option(10)  # run every N epochs (and after the last)
    at_start: bool = option(False)  # also measure the untrained (or init_from) teacher before step 0
    batch_size: int = option(128)  # images per step when extracting features (main process)
    # λ of the teacher backbone when extracting features (the fine-tune default is 0.2)
    semantic_weight: float = option(0.2)

    def validate(self) -> None:
        require(0 <= self.semantic_weight <= 1, "semantic_weight", "must be in [0, 1]")
        require(self.every_epochs >= 1, "every_epochs", "must be >= 1")
        require(self.batch_size >= 1, "batch_size", "must be >= 1")


@dataclass
class PretrainConfig:
    """The whole pretraining experiment."""

    results_dir: str = option("results/pretrain")  # checkpoints, logs and the resolved config go here
    seed: int = option(0)  # random seed
    model: ModelConfig = option(ModelConfig())
    data: DataConfig = option(DataConfig())
    dino: DinoConfig = option(DinoConfig())
    semantic: SemanticConfig = option(SemanticConfig())
    optim: OptimConfig = option(OptimConfig())
    train: TrainConfig = option(TrainConfig())
    knn_eval: KnnEvalConfig = option(KnnEvalConfig())

    def validate(self) -> None:
        require(self.dino.warmup_teacher_temp_epochs <= self.optim.epochs, "dino.warmup_teacher_temp_epochs",
                "must not exceed optim.epochs", "optim.epochs")


def recipe_warnings(cfg: PretrainConfig, cpu_capability: str | None = None) -> list[str]:
    """Settings that are valid but known to train badly, as one-line warnings.

    ``cpu_capability`` is ``torch.backends.cpu.get_cpu_capability()`` when training on the
    CPU (None on an accelerator).
    """
    warnings = []
    d = cfg.data
    # DINO (main_dino.py, help of --global_crops_scale / --local_crops_number) recommends a
    # wider global scale such as 0.14-1 when multi-crop is off. Measured on the synthetic
    # world (README, "Pretraining in miniature"): with 0.8-1 and no local crops the teacher's
    # kNN mAP stays below random init for 1,500 steps; with 0.14-1 it passes it within 400.
    if d.local_crops_number == 0 and d.global_crop_scale[0] > 0.4:
        warnings.append(
            f"data.local_crops_number=0 with data.global_crop_scale={list(d.global_crop_scale)}: without "
            "local crops the two global views nearly coincide and DINO learns little; DINO recommends a "
            "wider global scale such as [0.14, 1.0] when multi-crop is off")
    # bf16 matrix products are native only with AVX512-BF16 / AMX; elsewhere autocast emulates
    # them (bench/bench_cpu_precision.py on an AVX2 CPU: 11x slower than fp32, README). torch's
    # capability string only tells AVX2 from AVX512, so an AVX512 CPU without the bf16
    # extension is not flagged.
    if cfg.train.mixed_precision == "bf16" and cpu_capability is not None and "AVX512" not in cpu_capability:
        warnings.append(
            f"train.mixed_precision=bf16 on a CPU without native bf16 (torch CPU capability {cpu_capability}): "
            "expect it to be much slower than train.mixed_precision=no")
    return warnings
