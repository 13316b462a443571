"""Teacher-labelled augmented views of image transfer sets: random crop with padding, flip.

The usual CIFAR recipe: pad every image with ``padding`` zero pixels on each side, crop a
random window of the original size, and flip it horizontally with probability 1/2. The views
are made once, before the teacher's targets are computed (``views`` of every image, labels
repeated), so the teacher labels each view once and the student's epochs read cached targets.
Why cached views and not views drawn and labelled on the fly in the data loader: with cached
views the teacher labels each view once and every epoch is a plain pass over tensors, while on
the fly the teacher (and, for ``bregman``, the per-position coefficient solve) runs at every
step. ``benchmarks/image_flow.py --part augment`` measures both at equal optimizer steps.
"""
from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["crop_flip", "image_views"]


def crop_flip(x: Tensor, padding: int, flip: bool, generator: torch.Generator) -> Tensor:
    """One random view of every image of ``x`` (B, C, H, W): padded crop, optional flip."""
    b, _, h, w = x.shape
    dev = x.device
    if padding > 0:
        x = torch.nn.functional.pad(x, (padding, padding, padding, padding))
    oy = torch.randint(0, 2 * padding + 1, (b,), generator=generator).to(dev)
    ox = torch.randint(0, 2 * padding + 1, (b,), generator=generator).to(dev)
    rows = (oy[:, None] + torch.arange(h, device=dev))[:, :, None]  # (B, H, 1)
    cols = ox[:, None] + torch.arange(w, device=dev)  # (B, W)
    if flip:
        flipped = torch.rand(b, generator=generator).to(dev) < 0.5
        cols = torch.where(flipped[:, None], cols.flip(1), cols)
    batch = torch.arange(b, device=dev)[:, None, None]
    # (B, H, W, C) by advanced indexing, then channels first again
    return x.permute(0, 2, 3, 1)[batch, rows, cols[:, None, :]].permute(0, 3, 1, 2).contiguous()


def image_views(x: Tensor, y: Tensor | None, views: int, padding: int = 4, flip: bool = True,
                seed: int = 0, batch_size: int = 4096) -> tuple[Tensor, Tensor | None]:
    """``x`` followed by ``views`` augmented views of every image; labels repeated alike.

    Deterministic given ``seed``. ``x`` must be images (N, C, H, W); the views keep its dtype.
    """
    if isinstance(views, bool) or not isinstance(views, int) or views < 0:
        raise ValueError(f"augment_views must be an integer >= 0, got {views!r}")
    if views == 0:
        return x, y
    if x.dim() != 4:
        raise ValueError(f"augment_views needs image inputs (N, C, H, W), got per-example shape {tuple(x.shape[1:])}: "
                         "use augment_copies for flat inputs")
    if isinstance(padding, bool) or not isinstance(padding, int) or not 0 <= padding <= min(x.shape[-2:]):
        raise ValueError(f"augment_padding must be an integer between 0 and the image size, got {padding!r}")
    g = torch.Generator().manual_seed(90_000 + int(seed))
    parts = [x]
    for _ in range(views):
        parts.append(torch.cat([crop_flip(x[s:s + batch_size], padding, bool(flip), g)
                                for s in range(0, int(x.shape[0]), batch_size)]))
    return torch.cat(parts), (None if y is None else y.repeat(views + 1))
