"""Multi-crop views made on the training device from decoded images (``data.augment_on=device``).

DataLoader workers only decode (JPEG draft mode when ``data.decode_draft``) and plan: each
sample is ``MultiCropAugmentation.device_sample`` -- the uint8 pixels and one row of numbers
per view (``multicrop.PARAM_NAMES``: the crop box in the decoded image and every photometric
draw). ``collate_device_samples`` pads a batch of them into one uint8 tensor. On the device,
``DeviceMultiCrop`` makes all views of the batch at once, view group by view group (the two
globals, the locals), in the CPU path's order: random-resized crop with PIL's antialiased
bicubic resampling (two separable passes, 22-bit fixed-point weights, rounding to uint8 after
each pass, as Pillow's ``Resample.c``), flip, colour jitter in each view's own order
(brightness / contrast / saturation as ``Image.blend`` with truncation, hue through Pillow's
uint8 HSV), grayscale (ITU-R 601-2 in 16-bit fixed point), Gaussian blur (Pillow's three box
blurs per direction with 24-bit fixed-point weights and edge replication), solarisation,
``to_tensor`` and normalisation.

The arithmetic follows Pillow's C code step by step, integers where it uses integers, so a
plan gives the same views on both paths; ``tests/test_device_multicrop.py`` measures how
close (pixel agreement for shared plans, and the statistics of boxes and colour changes over
independent draws). Which samples a photometric step touches is known on the host from the
plans, so the device work needs no host synchronisation; a host-side pass over the batch's
plans (a few hundred numbers) chooses the index lists.
"""
from __future__ import annotations

import contextlib
from typing import Sequence

import numpy as np
import torch

from soliderkit.pretrain.multicrop import PARAM_NAMES, MultiCropAugmentation

__all__ = ["DeviceMultiCrop", "collate_device_samples"]

P = {name: i for i, name in enumerate(PARAM_NAMES)}
_RESAMPLE_BITS = 22  # Pillow Resample.c: PRECISION_BITS = 32 - 8 - 2
_BLUR_BITS = 24  # Pillow BoxBlur.c: weights scaled by 1 << 24
_BLUR_PASSES = 3


def collate_device_samples(samples: Sequence[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """One batch: ``images`` uint8 B x H x W x 3 (zero-padded to the largest), ``sizes`` B x 2
    (each image's height, width) and ``params`` B x views x len(PARAM_NAMES)."""
    height = max(s["image"].shape[0] for s in samples)
    width = max(s["image"].shape[1] for s in samples)
    images = torch.zeros((len(samples), height, width, 3), dtype=torch.uint8)
    sizes = torch.empty((len(samples), 2), dtype=torch.int64)
    for i, sample in enumerate(samples):
        h, w = sample["image"].shape[:2]
        images[i, :h, :w] = sample["image"]
        sizes[i, 0], sizes[i, 1] = h, w
    return {"images": images, "sizes": sizes, "params": torch.stack([s["params"] for s in samples])}


def _bicubic(x: torch.Tensor) -> torch.Tensor:
    """Pillow's bicubic filter (a = -0.5)."""
    a = -0.5
    x = x.abs()
    near = ((a + 2.0) * x - (a + 3.0)) * x * x + 1
    far = (((x - 5) * x + 8) * x - 4) * a
    return torch.where(x < 1.0, near, torch.where(x < 2.0, far, torch.zeros_like(x)))


def _taps_needed(length: np.ndarray, out_size: int) -> int:
    """The most input pixels any output pixel of these boxes reads (Pillow's ``ksize``)."""
    filterscale = np.maximum(length.astype(np.float64) / out_size, 1.0)
    return int(np.ceil(2.0 * filterscale).max()) * 2 + 1 if length.size else 1


def _resample_taps(start: torch.Tensor, length: torch.Tensor, limit: torch.Tensor, out_size: int,
                   taps: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Input positions and fixed-point weights (``n x out_size x taps``) of Pillow's bicubic
    resize of the boxes [start, start + length) along one axis (``precompute_coeffs`` +
    ``normalize_coeffs_8bpc``); the input is the whole pixels the box touches, as when the
    box is cropped first and then resized."""
    start, length = start.double(), length.double()
    lo = torch.floor(start)
    hi = torch.minimum(torch.ceil(start + length), limit.double())
    in_size, in0 = hi - lo, start - lo
    scale = length / out_size
    filterscale = scale.clamp(min=1.0)
    support = 2.0 * filterscale
    center = in0[:, None] + (torch.arange(out_size, dtype=torch.float64, device=start.device) + 0.5) * scale[:, None]
    xmin = torch.floor(center - support[:, None] + 0.5).clamp(min=0)
    xmax = torch.minimum(torch.floor(center + support[:, None] + 0.5), in_size[:, None])
    k = torch.arange(taps, dtype=torch.float64, device=start.device)
    position = xmin[..., None] + k
    weight = _bicubic((position - center[..., None] + 0.5) / filterscale[:, None, None])
    weight = torch.where(k < (xmax - xmin)[..., None], weight, torch.zeros_like(weight))
    total = weight.sum(-1, keepdim=True)
    weight = torch.where(total != 0, weight / torch.where(total != 0, total, torch.ones_like(total)), weight)
    scaled = weight * (1 << _RESAMPLE_BITS)
    fixed = torch.where(scaled < 0, torch.trunc(scaled - 0.5), torch.trunc(scaled + 0.5)).to(torch.int32)
    return (lo[:, None, None] + position).long(), fixed


@contextlib.contextmanager
def _exact_float32():
    """Full float32 matrix products (no TF32 / bf16 shortcuts that a training run may allow):
    the resampling sums then round exactly as Pillow's integer ones, but for sums within ~1e-5
    of a rounding boundary."""
    saved = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("highest")
    try:
        yield
    finally:
        torch.set_float32_matmul_precision(saved)


def _weight_matrix(index: torch.Tensor, fixed: torch.Tensor, length: int) -> torch.Tensor:
    """Dense float32 ``n x out x length`` resampling matrix from taps (zeros elsewhere); each
    weight is Pillow's 22-bit fixed-point integer, exactly, in units of 2**-22."""
    weights = fixed.float() / (1 << _RESAMPLE_BITS)
    dense = torch.zeros((*index.shape[:2], length), dtype=torch.float32, device=index.device)
    return dense.scatter_add_(2, index.clamp(0, length - 1), weights)


def _to_uint8_values(x: torch.Tensor) -> torch.Tensor:
    """Pillow's ``clip8`` of a fixed-point sum: round half up, clip to 0..255 (in place)."""
    return x.add_(0.5).floor_().clamp_(0, 255)


def _resample(images: torch.Tensor, boxes: torch.Tensor, sizes: torch.Tensor, out: tuple[int, int],
              taps: tuple[int, int]) -> torch.Tensor:
    """Crop-and-resize of ``images`` (float32 B x C x H x W, values 0..255) to ``boxes`` (B x V x
    [top, left, height, width]) -> float32 (B*V) x C x out_h x out_w, horizontal pass first.

    Each pass is one batched matrix product with the (banded) resampling matrices, which is how
    a GPU does it fastest; rounding to uint8 values after each pass as Pillow does."""
    batch, views = boxes.shape[:2]
    channels, height, width = images.shape[1:]
    out_h, out_w = out
    flat = boxes.reshape(-1, 4)
    limits = sizes.repeat_interleave(views, dim=0)
    across = _weight_matrix(*_resample_taps(flat[:, 1], flat[:, 3], limits[:, 1], out_w, taps[1]), width)
    down = _weight_matrix(*_resample_taps(flat[:, 0], flat[:, 2], limits[:, 0], out_h, taps[0]), height)
    with _exact_float32():
        # rows of every channel x the columns of every view of the same image: B x (C*H) x (V*out_w)
        rows = torch.bmm(images.reshape(batch, channels * height, width),
                         across.view(batch, views * out_w, width).transpose(1, 2))
        rows = _to_uint8_values(rows).view(batch, channels, height, views, out_w)
        rows = rows.permute(0, 3, 2, 1, 4).reshape(batch * views, height, channels * out_w)
        result = _to_uint8_values(torch.bmm(down, rows))  # (B*V) x out_h x (C*out_w)
    return result.view(batch * views, out_h, channels, out_w).permute(0, 2, 1, 3).contiguous()


# ---------------------------------------------------------------------------- photometric steps
# x: float32 n x 3 x H x W holding integers 0..255 (a PIL image's values); factors: float32 n.

def _blend(degenerate: torch.Tensor, x: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
    """``Image.blend(degenerate, x, alpha)``: float32 ``in1 + alpha * (in2 - in1)``, clipped and truncated."""
    return torch.floor((degenerate + alpha.view(-1, 1, 1, 1) * (x - degenerate)).clamp_(0, 255))


def _luma(x: torch.Tensor) -> torch.Tensor:
    """``convert("L")``: (R 19595 + G 38470 + B 7471 + 0x8000) >> 16, n x 1 x H x W."""
    r, g, b = x[:, 0:1], x[:, 1:2], x[:, 2:3]
    return torch.floor((r * 19595 + g * 38470 + b * 7471 + 32768) / 65536)


def _brightness(x: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
    return _blend(torch.zeros_like(x), x, f)


def _contrast(x: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
    luma = _luma(x)
    mean = luma.double().mean(dim=(1, 2, 3), keepdim=True)  # ImageStat.Stat(L).mean
    return _blend(torch.floor(mean + 0.5).float().expand_as(x), x, f)


def _saturation(x: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
    return _blend(_luma(x).expand_as(x), x, f)


def _hue(x: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """torchvision's ``adjust_hue`` on a PIL image: Pillow's uint8 HSV (Convert.c ``rgb2hsv_row``,
    ``hsv2rgb``; float where it uses float, double where double), hue + shift mod 256."""
    r, g, b = x[:, 0], x[:, 1], x[:, 2]
    maxc, minc = torch.maximum(torch.maximum(r, g), b), torch.minimum(torch.minimum(r, g), b)
    grey = maxc == minc
    cr = torch.where(grey, torch.ones_like(maxc), maxc - minc)
    s = cr / torch.where(maxc == 0, torch.ones_like(maxc), maxc)
    rc, gc, bc = (maxc - r) / cr, (maxc - g) / cr, (maxc - b) / cr
    h = torch.where(r == maxc, bc - gc,
                    torch.where(g == maxc, ((2.0 + rc.double()) - bc.double()).float(),
                                ((4.0 + gc.double()) - rc.double()).float()))
    h = torch.fmod(h.double() / 6.0 + 1.0, 1.0).float()
    hu = torch.where(grey, torch.zeros_like(h), torch.trunc(h.double() * 255.0).clamp(0, 255).float())
    su = torch.where(grey, torch.zeros_like(s), torch.trunc(s.double() * 255.0).clamp(0, 255).float())
    hu = torch.remainder(hu + shift.view(-1, 1, 1), 256)

    v = maxc.double()
    hd = hu.double() * 6.0 / 255.0
    i = torch.floor(hd)
    f = (hd - i).float()
    fs = (su.double() / 255.0).float()
    p = torch.floor(v * (1.0 - fs.double()) + 0.5).clamp(0, 255).float()
    q = torch.floor(v * (1.0 - (fs * f).double()) + 0.5).clamp(0, 255).float()
    t = torch.floor(v * (1.0 - fs.double() * (1.0 - f.double())) + 0.5).clamp(0, 255).float()
    sector = torch.remainder(i, 6).long()
    vf = maxc
    choices = torch.stack([torch.stack(c) for c in ((vf, t, p), (q, vf, p), (p, vf, t), (p, q, vf), (t, p, vf),
                                                     (vf, p, q))])  # 6 x 3 x n x H x W
    out = choices.gather(0, sector.unsqueeze(0).unsqueeze(0).expand(1, 3, *sector.shape)).squeeze(0)
    out = out.permute(1, 0, 2, 3)
    return torch.where((su == 0).unsqueeze(1), maxc.unsqueeze(1).expand_as(x), out)


def _grayscale(x: torch.Tensor) -> torch.Tensor:
    return _luma(x).expand_as(x).contiguous()


def _box_blur_pass(x: torch.Tensor, weights: torch.Tensor, dim: int) -> torch.Tensor:
    """One pass of Pillow's ``ImagingLineBoxBlur8`` along ``dim`` (edge pixels extended):
    ``weights`` int64 n x taps (centred), result rounded to uint8 values (int64 arithmetic, as
    Pillow's UINT32 sums can pass 2**31)."""
    reach = weights.shape[1] // 2
    size = x.shape[dim]
    first, last = x.narrow(dim, 0, 1), x.narrow(dim, size - 1, 1)
    shape = list(x.shape)
    shape[dim] = reach
    padded = torch.cat([first.expand(shape), x, last.expand(shape)], dim=dim)
    acc = torch.zeros_like(x)
    for k in range(weights.shape[1]):
        acc += padded.narrow(dim, k, size) * weights[:, k].view(-1, 1, 1, 1)
    return (acc + (1 << (_BLUR_BITS - 1))) >> _BLUR_BITS


def _gaussian_blur(x: torch.Tensor, radius: torch.Tensor, inner: torch.Tensor, edge: torch.Tensor,
                   reach: int) -> torch.Tensor:
    """``ImageFilter.GaussianBlur``: three box passes horizontally, then three vertically."""
    offsets = torch.arange(-reach, reach + 1, device=x.device).abs()[None, :]
    radius = radius.view(-1, 1)
    weights = torch.where(offsets <= radius, inner.view(-1, 1),
                          torch.where(offsets == radius + 1, edge.view(-1, 1), torch.zeros_like(offsets)))
    y = x.long()
    for dim in (3, 2):
        for _ in range(_BLUR_PASSES):
            y = _box_blur_pass(y, weights, dim)
    return y.float()


_JITTER = (_brightness, _contrast, _saturation, _hue)
_FACTOR = (P["brightness"], P["contrast"], P["saturation"], P["hue_shift"])


class DeviceMultiCrop:
    """``views = DeviceMultiCrop(...)(batch, device)``: the list of view batches the CPU path's
    collate gives (global 1, global 2, local 1..N), each float32 B x 3 x H x W on ``device``."""

    def __init__(self, global_size: Sequence[int], local_size: Sequence[int], local_number: int,
                 mean: Sequence[float], std: Sequence[float]):
        self.global_size = (int(global_size[0]), int(global_size[1]))
        self.local_size = (int(local_size[0]), int(local_size[1]))
        self.local_number = int(local_number)
        self.mean, self.std = list(mean), list(std)

    @classmethod
    def like(cls, augment: MultiCropAugmentation) -> "DeviceMultiCrop":
        return cls(augment.global_size, augment.local_size, augment.local_number, augment.mean, augment.std)

    def __call__(self, batch: dict[str, torch.Tensor], device: torch.device | str | None = None) -> list[torch.Tensor]:
        device = torch.device(device) if device is not None else batch["images"].device
        params = batch["params"]
        host = params.cpu().numpy()  # the loader's CPU tensor: no device round trip
        images = batch["images"].to(device, non_blocking=True).permute(0, 3, 1, 2).float()
        sizes = batch["sizes"].to(device, non_blocking=True)
        params_dev = params.to(device, non_blocking=True)
        views: list[torch.Tensor] = []
        groups = [(0, 2, self.global_size), (2, 2 + self.local_number, self.local_size)]
        for first, last, size in groups:
            if last <= first:
                continue
            views += self._group(images, sizes, params_dev[:, first:last], host[:, first:last], size)
        return views

    def _group(self, images: torch.Tensor, sizes: torch.Tensor, params: torch.Tensor, host: np.ndarray,
               size: tuple[int, int]) -> list[torch.Tensor]:
        batch, count = host.shape[:2]
        taps = (_taps_needed(host[..., P["height"]], size[0]), _taps_needed(host[..., P["width"]], size[1]))
        boxes = params[..., [P["top"], P["left"], P["height"], P["width"]]]
        x = _resample(images, boxes, sizes, size, taps)
        flat = params.reshape(batch * count, -1)
        rows = host.reshape(batch * count, -1)
        device = x.device

        def index(mask: np.ndarray) -> torch.Tensor | None:
            found = np.flatnonzero(mask)
            return torch.from_numpy(found).to(device, non_blocking=True) if found.size else None

        def update(where: torch.Tensor | None, step, *args) -> None:
            if where is not None:
                x.index_copy_(0, where, step(x.index_select(0, where), *(a.index_select(0, where) for a in args)))

        update(index(rows[:, P["flip"]] > 0), lambda v: v.flip(-1))
        jitter = rows[:, P["jitter"]] > 0
        for position in range(4):
            order = rows[:, P["order0"] + position]
            for op in range(4):
                update(index(jitter & (order == op)), _JITTER[op], flat[:, _FACTOR[op]])
        update(index(rows[:, P["grayscale"]] > 0), _grayscale)
        blurred = rows[:, P["blur"]] > 0
        if blurred.any():
            reach = int(rows[blurred, P["blur_radius"]].max()) + 1
            as_long = flat[:, [P["blur_radius"], P["blur_ww"], P["blur_fw"]]].long()
            update(index(blurred), lambda v, r, w, e: _gaussian_blur(v, r, w, e, reach),
                   as_long[:, 0], as_long[:, 1], as_long[:, 2])
        update(index(rows[:, P["solarize"]] > 0), lambda v: torch.where(v >= 128, 255 - v, v))
        mean = torch.tensor(self.mean, dtype=torch.float32, device=device).view(1, 3, 1, 1)
        std = torch.tensor(self.std, dtype=torch.float32, device=device).view(1, 3, 1, 1)
        x = x.div_(255).sub_(mean).div_(std).view(batch, count, 3, *size)
        return [x[:, i].contiguous() for i in range(count)]
