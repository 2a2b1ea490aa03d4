"""Multi-crop views on the device (``data.augment_on=device``) against the CPU path, and JPEG draft
decoding (``data.decode_draft``).

* Each step of ``DeviceMultiCrop`` reproduces Pillow exactly (resampling pass by pass, blends,
  hue, grayscale, blur, solarisation), and the plan-first CPU path gives today's views.
* Shared plans: device views agree with CPU views on nearly every pixel (Pillow >= 13 may run
  the vertical resampling pass first, which moves a few pixels by a level or more).
* Independent draws (different seeds per path): the crop geometry read back from the pixels of a
  coordinate image (drafted JPEG on the device path, full decode on the CPU path) and the colour
  changes of the photometric recipe have the same statistics; tolerances are 4.5 standard errors
  of the difference of two means (a false alarm per comparison < 1e-5) plus a stated allowance
  for rounding.
"""
import dataclasses
import io
import math
import random
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision.transforms.functional as TF
from PIL import Image, ImageFilter, ImageOps
from torchvision.transforms import InterpolationMode

from soliderkit.data.stream import make_shard_loader
from soliderkit.pretrain.device_multicrop import DeviceMultiCrop, _resample, _resample_taps, collate_device_samples
from soliderkit.pretrain.multicrop import PARAM_NAMES, DecodedImage, MultiCropAugmentation

P = {name: i for i, name in enumerate(PARAM_NAMES)}
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True, scope="module")
def _one_thread(one_thread):
    """Tiny models: one intra-op thread (conftest.one_thread)."""


def noise_image(height: int, width: int, seed: int = 0) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8))


def person_jpeg(world, index: int, height: int, quality: int = 90) -> bytes:
    people = sorted((world / "unlabeled").rglob("*.jpg"))
    with Image.open(people[index % len(people)]) as person:
        image = person.convert("RGB").resize((height // 2, height), Image.Resampling.BICUBIC)
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=quality)
    return buffer.getvalue()


def levels(view: torch.Tensor, augment: MultiCropAugmentation) -> torch.Tensor:
    """A normalised view back in 0..255 units."""
    mean = torch.tensor(augment.mean).view(-1, 3, 1, 1)
    std = torch.tensor(augment.std).view(-1, 3, 1, 1)
    return (view * std + mean) * 255


def assert_pillows(got: torch.Tensor, expected) -> None:
    """Equal to Pillow's uint8 result, but for the rare sum that float32 leaves within ~1e-5 of a
    rounding boundary (Pillow sums 22-bit integers exactly): one level, at most 0.1 % of values."""
    expected = torch.from_numpy(np.array(expected)).permute(2, 0, 1).float()
    difference = (got - expected).abs()
    assert difference.max() <= 1 and (difference > 0).float().mean() <= 1e-3


def device_views(augment: MultiCropAugmentation, decoded: list[DecodedImage]) -> list[torch.Tensor]:
    batch = collate_device_samples([augment.device_sample(d) for d in decoded])
    return DeviceMultiCrop.like(augment)(batch, "cpu")


# --- exactness, step by step ----------------------------------------------------------------------

@pytest.mark.parametrize("box, out", [((0, 12, 40, 133), (40, 128)), ((3, 0, 40, 150), (40, 60)),
                                      ((0, 5, 40, 31), (40, 90)), ((17, 0, 150, 150), (64, 150)),
                                      ((2, 0, 30, 150), (96, 150))])
def test_each_resampling_pass_is_pillows(box, out):
    """One-axis crops-and-resizes (down and up) are Pillow's to the bit."""
    image = noise_image(200, 150)
    top, left, height, width = box
    expected = TF.resized_crop(image, top, left, height, width, list(out), interpolation=InterpolationMode.BICUBIC)
    pixels = torch.from_numpy(np.array(image)).permute(2, 0, 1)[None].float()
    taps = tuple(math.ceil(2 * max(n / o, 1.0)) * 2 + 1 for n, o in ((height, out[0]), (width, out[1])))
    got = _resample(pixels, torch.tensor([[[top, left, height, width]]], dtype=torch.float32),
                    torch.tensor([[200, 150]]), out, taps)[0]
    assert_pillows(got, expected)


def test_fractional_boxes_use_pillows_resize_box():
    image = noise_image(120, 90)
    for left, width in ((0.25, 40.0), (7.5, 80.25), (0.125, 89.875)):
        x0, x1 = math.floor(left), math.ceil(left + width)
        index, weight = _resample_taps(torch.tensor([left]), torch.tensor([width]), torch.tensor([90]), 32, 11)
        assert index[weight != 0].min() >= x0 and index[weight != 0].max() < x1  # only the pixels the box touches
        pixels = torch.from_numpy(np.array(image)).permute(2, 0, 1)[None].float()
        # the horizontal pass alone (height kept): compare it with Pillow's
        taps = math.ceil(2 * max(width / 32, 1.0)) * 2 + 1  # Pillow's ksize
        got = _resample(pixels, torch.tensor([[[0.0, left, 120.0, width]]]), torch.tensor([[120, 90]]), (120, 32),
                        (5, taps))[0]
        expected = image.crop((x0, 0, x1, 120)).resize((32, 120), Image.Resampling.BICUBIC,
                                                      box=(left - x0, 0, left - x0 + width, 120))
        assert_pillows(got, expected)


def _cleared(plan):
    return dataclasses.replace(plan, flip=False, jitter=None, grayscale=False, blur_radius=None, solarize=False)


@pytest.mark.parametrize("step", ["flip", "brightness", "contrast", "saturation", "hue", "all jitter",
                                  "grayscale", "blur", "solarize"])
def test_each_photometric_step_is_pillows(step):
    augment = MultiCropAugmentation((64, 32), (32, 16), local_number=2)
    image = noise_image(64, 40, seed=3)
    plans = [_cleared(p) for p in augment.plan(image.width, image.height, random.Random(1))]
    # crops whose height is the output's: Pillow then makes one (horizontal) pass, whatever its order
    plans = [dataclasses.replace(p, top=0, height=p.size[0] if p.size[0] <= 64 else 64) for p in plans]
    order = {"brightness": (0, 1, 2, 3), "contrast": (1, 0, 2, 3), "saturation": (2, 1, 0, 3), "hue": (3, 0, 1, 2),
             "all jitter": (2, 3, 0, 1)}
    changed = []
    for i, plan in enumerate(plans):
        if step == "flip":
            plan = dataclasses.replace(plan, flip=True)
        elif step in order:
            factors = (1.31 - 0.2 * i, 0.64 + 0.3 * i, 1.17 - 0.4 * i, (-0.09, 0.07, 0.004, -0.5)[i % 4])
            if step != "all jitter":  # the other three at identity... except the hue round trip, kept last
                factors = tuple(f if k == order[step][0] else (0.0 if k == 3 else 1.0) for k, f in enumerate(factors))
            plan = dataclasses.replace(plan, jitter=(factors, order[step]))
        elif step == "grayscale":
            plan = dataclasses.replace(plan, grayscale=True)
        elif step == "blur":
            plan = dataclasses.replace(plan, blur_radius=(0.1, 0.77, 1.5, 2.0)[i % 4])
        elif step == "solarize":
            plan = dataclasses.replace(plan, solarize=True)
        changed.append(plan)
    decoded = DecodedImage(image, changed)
    for cpu, device in zip(augment.apply(decoded), device_views(augment, [decoded])):
        difference = (levels(cpu, augment) - levels(device, augment)).abs()
        assert difference.max() < 1.5 and (difference > 0.5).float().mean() <= 1e-3, step


def test_pillows_own_ops_are_what_the_cpu_path_calls():
    """The CPU path's steps are the torchvision / Pillow calls the device path emulates."""
    view = noise_image(32, 16)
    assert np.array_equal(np.asarray(TF.adjust_brightness(view, 1.2)),
                          np.asarray(Image.blend(Image.new("RGB", view.size, 0), view, 1.2)))
    assert np.array_equal(np.asarray(view.filter(ImageFilter.GaussianBlur(1.0))),
                          np.asarray(view.filter(ImageFilter.GaussianBlur(radius=1.0))))
    assert np.array_equal(np.asarray(ImageOps.solarize(view)),
                          np.where(np.asarray(view) >= 128, 255 - np.asarray(view), np.asarray(view)))


def test_planning_first_gives_the_same_views_and_draws():
    augment = MultiCropAugmentation((64, 32), (32, 16), local_number=3)
    data = io.BytesIO()
    noise_image(90, 50).save(data, "PNG")
    with Image.open(io.BytesIO(data.getvalue())) as image:
        whole = image.convert("RGB")
    a, b = random.Random(7), random.Random(7)
    direct = augment.crops(whole, a)
    planned = augment.apply(augment.decode(data.getvalue(), b))
    assert all(torch.equal(x, y) for x, y in zip(direct, planned))
    assert a.random() == b.random()  # the same number of draws


# --- draft decoding -------------------------------------------------------------------------------

def test_draft_factor_keeps_every_crop_at_least_its_output_size():
    augment = MultiCropAugmentation((64, 32), (32, 16), local_number=2, decode_draft=True)
    for width, height in ((40, 80), (200, 400), (1000, 2000)):
        for seed in range(20):
            plans = augment.plan(width, height, random.Random(seed))
            factor = augment.draft_factor(plans)
            assert factor in (1, 2, 4, 8)
            if factor > 1:
                assert all(p.height / factor >= p.size[0] and p.width / factor >= p.size[1] for p in plans)
            if factor < 8:  # and the next factor would break one of them
                assert any(p.height / (2 * factor) < p.size[0] or p.width / (2 * factor) < p.size[1] for p in plans)


def test_draft_decoding_reduces_big_jpegs_and_keeps_the_views(tiny_world):
    augment = MultiCropAugmentation((64, 32), (32, 16), local_number=1, local_scale=(0.5, 0.8), decode_draft=True)
    full = MultiCropAugmentation((64, 32), (32, 16), local_number=1, local_scale=(0.5, 0.8))
    data = person_jpeg(tiny_world, 0, 640)
    reduced = 0
    for seed in range(8):
        drafted, whole = augment.decode(data, random.Random(seed)), full.decode(data, random.Random(seed))
        assert drafted.plans == whole.plans
        factor = augment.draft_factor(drafted.plans)
        assert drafted.image.size == (-(-320 // factor), -(-640 // factor)) and drafted.scale == (factor, factor)
        reduced += factor > 1
        for a, b in zip(augment.apply(drafted), full.apply(whole)):
            # DCT-domain scaling instead of bicubic: the same picture, within a few levels on average
            assert (levels(a, augment) - levels(b, full)).abs().mean() < 4.0
    assert reduced >= 6


def test_a_failed_decode_draws_nothing():
    augment = MultiCropAugmentation((64, 32), (32, 16), local_number=1, decode_draft=True)
    buffer = io.BytesIO()
    noise_image(200, 100).save(buffer, "JPEG")
    rng = random.Random(3)
    state = rng.getstate()
    with pytest.raises(OSError):
        augment.decode(buffer.getvalue()[:300], rng)  # truncated: the header reads, the pixels do not
    assert rng.getstate() == state


def test_shard_stream_decode_hook_counts_failures_as_corrupt(tmp_path):
    from soliderkit.data.build import build_shards

    src = tmp_path / "src"
    src.mkdir()
    for i in range(6):
        noise_image(64, 32, seed=i).save(src / f"{i:04d}_c1s1_000000_00.jpg")
    build_shards(src, tmp_path / "shards", maxcount=3)

    def decode(data: bytes):
        if decode.calls == 2:
            decode.calls += 1
            raise OSError("planted")
        decode.calls += 1
        return len(data)

    decode.calls = 0
    loader = make_shard_loader(tmp_path / "shards", 1, lambda size: torch.tensor(size), resampled=False,
                               num_workers=0, rank=0, world_size=1, shuffle_buffer=0, decode=decode)
    sizes = [int(batch[0]) for batch in loader]
    assert len(sizes) == 5 and loader.stats["corrupt_samples"] == 1


# --- shared plans: device views against CPU views --------------------------------------------------

def test_device_views_agree_with_cpu_views_for_shared_plans(tiny_world):
    augment = MultiCropAugmentation((128, 64), (64, 32), local_number=4)
    decoded = [augment.decode(person_jpeg(tiny_world, i, (96, 128, 192, 256)[i % 4]), random.Random(i))
               for i in range(12)]
    device = device_views(augment, decoded)
    cpu = [torch.stack(v) for v in zip(*(augment.apply(d) for d in decoded))]
    for a, b in zip(cpu, device):
        difference = levels(a, augment) - levels(b, augment)
        assert difference.abs().mean() < 0.2  # measured 0.01-0.05
        assert (difference.abs() > 0.5).float().mean() < 0.08  # pixels off by a level or more: measured 1-4 %
        assert difference.mean(dim=(2, 3)).abs().max() < 0.5  # no view's channel mean moves by half a level


# --- independent draws: statistics of the two paths ------------------------------------------------

def _tolerance(a: np.ndarray, b: np.ndarray, allowance: float = 0.0) -> float:
    """4.5 standard errors of mean(a) - mean(b) (two independent samples) + ``allowance``."""
    return 4.5 * math.sqrt(a.var(ddof=1) / len(a) + b.var(ddof=1) / len(b)) + allowance


@pytest.mark.slow
def test_crop_geometry_from_pixels_matches_between_paths():
    """A coordinate image (red = x, green = y) as a 1024x512 JPEG: the device path decodes it
    drafted (1/2 or 1/4 size when the plan allows), the CPU path at full size; each view's
    red / green means and edge values give the crop's centre and extent in image fractions."""
    height, width = 1024, 512
    y, x = np.mgrid[0:height, 0:width]
    coords = np.stack([x * 255.0 / (width - 1), y * 255.0 / (height - 1), np.full_like(x, 128.0)], -1)
    buffer = io.BytesIO()
    Image.fromarray(coords.round().astype(np.uint8)).save(buffer, "JPEG", quality=95)
    data = buffer.getvalue()
    kwargs = dict(local_number=2, color_jitter_prob=0.0, grayscale_prob=0.0)
    cpu_path = MultiCropAugmentation((256, 128), (128, 64), **kwargs)
    device_path = MultiCropAugmentation((256, 128), (128, 64), decode_draft=True, **kwargs)

    def geometry(augment, seeds, on_device):
        rows, drafted = [], 0
        for chunk in range(0, len(seeds), 16):
            decoded = [augment.decode(data, random.Random(s)) for s in seeds[chunk:chunk + 16]]
            drafted += sum(d.scale != (1.0, 1.0) for d in decoded)
            views = device_views(augment, decoded) if on_device else \
                [torch.stack(v) for v in zip(*(augment.apply(d) for d in decoded))]
            for v, view in enumerate(views):
                pixels = levels(view, augment) / 255
                for i, d in enumerate(decoded):
                    if d.plans[v].solarize:  # inverts the coordinates: not geometry
                        continue
                    red, green = pixels[i, 0], pixels[i, 1]
                    extent_x = (red[:, -1].mean() - red[:, 0].mean()).abs()  # flipped views run right to left
                    extent_y = green[-1].mean() - green[0].mean()
                    rows.append((v > 1, red.mean(), green.mean(), extent_x, extent_y))
        return np.array(rows, dtype=np.float64), drafted

    cpu, _ = geometry(cpu_path, list(range(0, 240)), on_device=False)
    device, drafted = geometry(device_path, list(range(10_000, 10_240)), on_device=True)
    assert drafted > 30  # the device path really decoded smaller images
    for local in (False, True):
        a, b = cpu[cpu[:, 0] == local], device[device[:, 0] == local]
        for column, name in ((1, "centre x"), (2, "centre y"), (3, "width"), (4, "height")):
            # allowance: JPEG + DCT scaling move an edge column's mean by < 1/255 of the image
            assert abs(a[:, column].mean() - b[:, column].mean()) < _tolerance(a[:, column], b[:, column], 0.004), \
                (local, name)
        area_a, area_b = a[:, 3] * a[:, 4], b[:, 3] * b[:, 4]
        assert abs(area_a.mean() - area_b.mean()) < _tolerance(area_a, area_b, 0.004), (local, "area")
        aspect_a, aspect_b = np.log(a[:, 3] / a[:, 4]), np.log(b[:, 3] / b[:, 4])
        assert abs(aspect_a.mean() - aspect_b.mean()) < _tolerance(aspect_a, aspect_b, 0.01), (local, "aspect")


@pytest.mark.slow
def test_colour_changes_match_between_paths(tiny_world):
    """Per view and channel, the change of mean and of standard deviation that the photometric
    recipe makes (against the same crop without it): for the same draws on both paths (a paired
    comparison, which sees a 1 % error in one jitter factor) and for independent draws."""
    augment = MultiCropAugmentation((128, 64), (64, 32), local_number=2)
    images = [person_jpeg(tiny_world, i, (128, 192, 256)[i % 3]) for i in range(40)]

    def changes(seeds, on_device):
        out = []
        for chunk in range(0, len(seeds), 20):
            decoded = [augment.decode(images[s % len(images)], random.Random(s)) for s in seeds[chunk:chunk + 20]]
            plain = [DecodedImage(d.image, [_cleared(p) for p in d.plans], d.scale) for d in decoded]
            if on_device:
                views, bases = device_views(augment, decoded), device_views(augment, plain)
            else:
                views = [torch.stack(v) for v in zip(*(augment.apply(d) for d in decoded))]
                bases = [torch.stack(v) for v in zip(*(augment.apply(d) for d in plain))]
            for view, base in zip(views, bases):
                view, base = levels(view, augment), levels(base, augment)
                out.append(torch.cat([view.mean(dim=(2, 3)) - base.mean(dim=(2, 3)),
                                      view.std(dim=(2, 3)) - base.std(dim=(2, 3))], 1))
        return torch.cat(out).double().numpy()

    seeds = list(range(0, 300))
    cpu, paired = changes(seeds, on_device=False), changes(seeds, on_device=True)
    device = changes(list(range(50_000, 50_300)), on_device=True)
    assert len(cpu) == len(paired) == len(device) == 1200
    for column in range(6):  # mean change of R, G, B; std change of R, G, B
        # the same draws on both paths: the mean paired difference is ~0 (rounding only)
        difference = cpu[:, column] - paired[:, column]
        assert abs(difference.mean()) < 4.5 * difference.std(ddof=1) / math.sqrt(len(difference)) + 0.02, column
        assert np.quantile(np.abs(difference), 0.99) < 1.0, column
        # independent draws: same mean and spread
        a, b = cpu[:, column], device[:, column]
        assert abs(a.mean() - b.mean()) < _tolerance(a, b, 0.1), column  # allowance: rounding, 0.1 level
        assert abs(a.std() - b.std()) < 0.25 * max(a.std(), b.std()) + 0.1, column


# --- in the pretraining run --------------------------------------------------------------------------

@pytest.mark.slow
@pytest.mark.parametrize("kind", ["folder", "shards"])
def test_pretraining_with_views_on_the_device_matches_the_cpu_path(tiny_world, tmp_path, kind):
    """``data.augment_on=device`` (+ ``data.decode_draft``) trains from folders and shards; the same
    seeds give the same plans, so the first step's DINO loss is the CPU path's but for the few
    pixels rounded differently (measured: 0.01 % and 0.16 % apart)."""
    import json

    from script_loader import load_script

    run = load_script("pretrain/run.py")
    source = [f"data.path={tiny_world / 'unlabeled'}"]
    if kind == "shards":
        from soliderkit.data.build import build_shards

        build_shards(tiny_world / "unlabeled", tmp_path / "shards", maxcount=16)
        source = [f"data.path={tmp_path / 'shards'}", "data.kind=shards", "data.shuffle_buffer=8"]
    losses = {}
    for where in ("cpu", "device"):
        results = tmp_path / where
        assert run.main(["--config", str(ROOT / "configs/pretrain/synthetic_tiny.yaml"), f"results_dir={results}", *source, "data.batch_size_per_device=4", "data.batches_per_epoch=2",
                         "data.local_crops_number=1", "model.out_dim=128", "model.head_hidden_dim=32",
                         "model.bottleneck_dim=16", "semantic.part_head_hidden_dim=16", "optim.epochs=1",
                         "optim.warmup_epochs=1", "knn_eval.dataset_dir=null", f"data.augment_on={where}",
                         f"data.decode_draft={where == 'device'}"]) == 0
        losses[where] = [json.loads(line)["loss_dino"] for line in (results / "log.jsonl").read_text().splitlines()]
    assert len(losses["cpu"]) == len(losses["device"]) == 2
    assert losses["device"][0] == pytest.approx(losses["cpu"][0], rel=5e-3)


@pytest.mark.slow
def test_pipeline_bench_prints_both_paths_their_ratio_and_cores_per_gpu(tiny_world, tmp_path, capsys):
    import runpy
    import sys

    argv = ["bench_pipeline.py", "--src", str(tiny_world / "unlabeled"), "--work", str(tmp_path), "--batch-size", "8",
            "--workers", "1", "--repeats", "1", "--config", str(ROOT / "configs/pretrain/synthetic_tiny.yaml")]
    saved = sys.argv
    sys.argv = argv
    try:
        with pytest.raises(SystemExit) as done:
            runpy.run_path(str(ROOT / "bench/bench_pipeline.py"), run_name="__main__")
    finally:
        sys.argv = saved
    assert done.value.code == 0
    out = capsys.readouterr().out
    for path in ("today", "cpu + draft", "device", "device + draft"):
        assert f"\n{path} " in out
    assert "CPU vs today" in out and "GFLOP per image" in out and "cores (today)" in out
