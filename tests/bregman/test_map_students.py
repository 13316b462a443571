"""Map students (the channels layout): every position of the predicted map sees the whole image.

The defect these tests pin: a ``cnn`` map student was its trunk and a 1x1 head, so each output
position saw only a ~9x9-pixel window of the input; a deep teacher's map holds the image's class
at every position, and such students predicted the channel means (chance through the teacher's
head on the image benchmark).
"""
from __future__ import annotations

import torch
from torch.nn import functional as F

from bregman.distillation.students import build_student
from bregman.training import train_loop

IMAGE = (3, 32, 32)
CNN = {"arch": "cnn", "channels": [8, 16]}


def _cnn_map_student(channels: int, seed: int = 0):
    student, _ = build_student(CNN, IMAGE, channels, seed=seed, map_head={"channels": channels, "size": [8, 8]})
    return student.eval()


def test_a_corner_of_the_map_depends_on_the_opposite_corner_of_the_image():
    student = _cnn_map_student(4)
    x = torch.rand((2, *IMAGE), generator=torch.Generator().manual_seed(0))
    x2 = x.clone()
    x2[:, :, 24:, 24:] += 1.0  # the bottom-right 8x8 pixels only
    with torch.no_grad():
        top_left, top_left2 = student(x)[:, :, 0, 0], student(x2)[:, :, 0, 0]
    assert student(x).shape == (2, 4, 8, 8)
    assert (top_left - top_left2).abs().max() > 1e-4


def _quadrant_task(n: int, seed: int):
    """A bright 6x6 square in one quadrant of each noisy image; the target map is the one-hot
    quadrant at every one of the 8x8 positions (a 'class' that a deep layer holds everywhere)."""
    g = torch.Generator().manual_seed(seed)
    x = 0.1 * torch.rand((n, *IMAGE), generator=g)
    q = torch.randint(0, 4, (n,), generator=g)
    off = torch.randint(0, 10, (n, 2), generator=g)
    for i in range(n):
        r0, c0 = 16 * int(q[i] // 2) + int(off[i, 0]), 16 * int(q[i] % 2) + int(off[i, 1])
        x[i, :, r0:r0 + 6, c0:c0 + 6] = 1.0
    target = F.one_hot(q, 4).float()[:, :, None, None].expand(n, 4, 8, 8).contiguous()
    return x, target


def test_a_cnn_map_student_learns_a_map_of_the_whole_image():
    torch.manual_seed(0)
    x, target = _quadrant_task(256, seed=1)
    xt, tt = _quadrant_task(128, seed=2)
    student = _cnn_map_student(4)

    def loss(model, batch):
        return F.mse_loss(model(batch[0]), batch[1]), {}

    train_loop(student, [x, target], loss, epochs=40, batch_size=32, lr=3e-3, weight_decay=1e-4, seed=0)
    with torch.no_grad():
        pred = student.eval()(xt)
    const = F.mse_loss(tt.mean(0, keepdim=True).expand_as(tt), tt)
    r2 = 1 - F.mse_loss(pred, tt) / const
    # every position must name the quadrant: the top-left corner's prediction decoded alone
    corner_acc = (pred[:, :, 0, 0].argmax(1) == tt[:, :, 0, 0].argmax(1)).float().mean()
    print(f"R2 {float(r2):.3f} corner accuracy {float(corner_acc):.3f}")
    assert r2 > 0.8
    assert corner_acc > 0.9
