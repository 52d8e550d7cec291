"""Augmentation that D cannot leak: the same random transform T applied to reals and fakes alike (--augment).

D only ever sees T(x), for reals and for fakes, in D's update and in G's. Every T here is
differentiable, so G's gradient passes through it, and each image draws its own T every time D
sees it. G is never trained towards transformed faces: what T changes, it changes on both sides.

- **diffaug**: DiffAugment's `color,translation,cutout` policy (Zhao et al. 2020), the one its
  authors recommend for about 100 images, after mit-han-lab/data-efficient-gans,
  DiffAugment_pytorch.py, with its distributions:
  - brightness: + U(-0.5, 0.5);
  - saturation: the difference from the pixel's channel mean times U(0, 2). Our faces are grey
    in all three channels, so it changes nothing here;
  - contrast: the difference from the image mean times U(0.5, 1.5);
  - translation: a whole-pixel shift of up to 1/8 of the side each way, the uncovered pixels 0 (mid grey);
  - cutout: a square of half the side, centred anywhere in the image (cut at its edges), set to 0.
- **ada**: the adaptive augmentation of Karras et al. 2020 (NVlabs/stylegan2-ada-pytorch,
  training/augment.py), the transforms useful for faces, each firing with probability p per image:
  mirror, integer translation (U(-1/8, 1/8) of the side, rounded to pixels), isotropic scale
  (2^N(0, 0.2)), rotation (U(-ROTATE_MAX, ROTATE_MAX): the reference turns faces all the way
  round, which upright faces do not need), fractional translation (N(0, 1/8) of the side),
  brightness (+ N(0, 0.2)) and contrast (x 2^N(0, 0.5), about mid grey). The geometric ones are
  composed into one affine map and resampled once, bilinearly, mirroring at the borders (the
  reference also upsamples through a wavelet filter against aliasing, which this leaves out).
  p follows AdaController: r_t = E[sign(D(real))] over 4 minibatches, target 0.6.

Colour changes can leave [-1, 1]; the result is clipped back into the images' range once, at the
end, so D sees what an image could be (the reference does not clip). Where a pixel is clipped, that
draw passes it no gradient.

The random numbers are drawn as numpy arrays from Paddle's global generator (`draw`), and
`apply` is Paddle ops only, so the eager step and faststep.py's static program (which feeds the
draws) compute the same T from the same seed.

Example:
    T = Augment("diffaug")
    seen = D(T(paddle.concat([real, fake])))   # one draw per image
"""
import math

import runtime  # noqa: F401  (before Paddle: thread and MKL settings)
import numpy as np
import paddle
import paddle.nn.functional as F

KINDS = ("none", "diffaug", "ada")
ROTATE_MAX = 15.0          # degrees, ada's small rotation
ADA_TARGET = 0.6           # r_t that p steers towards
ADA_INTERVAL = 4           # minibatches between adjustments of p
ADA_KIMG = 500             # thousands of images for p to move from 0 to 1


# ----------------------------------------------------------------------------- draws (numpy)

def _uniform(shape):
    return paddle.rand(shape).numpy()


def shift_matrices(shifts, size):
    """[N, size, size] 0/1 matrices S with (S @ v)[i] = v[i + shift] (0 where i + shift is outside)."""
    i = np.arange(size)
    return (i[None, None, :] == i[None, :, None] + shifts[:, None, None]).astype(np.float32)


def diffaug_draw(n, size):
    """DiffAugment's random numbers for `n` images of side `size`."""
    colour = _uniform([n, 3])
    shift = size // 8
    moves = np.floor(_uniform([n, 2]) * (2 * shift + 1)).astype(int) - shift       # randint(-shift, shift + 1)
    half = size // 2
    centres = np.floor(_uniform([n, 2]) * (size + 1 - half % 2)).astype(int)       # randint(0, size + 1 - half % 2)
    i = np.arange(size)
    first = centres - half // 2
    rows = (i[None, :] >= first[:, :1]) & (i[None, :] < first[:, :1] + half)
    cols = (i[None, :] >= first[:, 1:]) & (i[None, :] < first[:, 1:] + half)
    mask = 1.0 - (rows[:, :, None] & cols[:, None, :]).astype(np.float32)
    return {"brightness": (colour[:, 0] - 0.5).reshape(n, 1, 1, 1),
            "saturation": (colour[:, 1] * 2).reshape(n, 1, 1, 1),
            "contrast": (colour[:, 2] + 0.5).reshape(n, 1, 1, 1),
            "rows": shift_matrices(moves[:, 0], size).repeat(3, axis=0),     # one per image and channel
            "cols": shift_matrices(moves[:, 1], size).transpose(0, 2, 1),
            "mask": mask[:, None]}


def ada_draw(n, size, p):
    """ADA's random numbers for `n` images: each transform fires with probability p per image."""
    fires = _uniform([n, 7]) < p
    u = _uniform([n, 5])
    g = paddle.randn([n, 6]).numpy()
    flip = np.where(fires[:, 0] & (u[:, 0] < 0.5), -1.0, 1.0)
    whole = np.where(fires[:, 1:2], np.round((u[:, 1:3] * 2 - 1) * 0.125 * size) / size, 0.0)   # in image sides
    scale = np.where(fires[:, 2], np.exp2(g[:, 0] * 0.2), 1.0)
    angle = np.where(fires[:, 3], (u[:, 3] * 2 - 1) * math.radians(ROTATE_MAX), 0.0)
    frac = np.where(fires[:, 4:5], g[:, 1:3] * 0.125, 0.0)
    brightness = np.where(fires[:, 5], g[:, 3] * 0.2, 0.0)
    contrast = np.where(fires[:, 6], np.exp2(g[:, 4] * 0.5), 1.0)
    # The map from output to input coordinates in [-1, 1] (affine_grid's): y -> A y + t, composed as
    # the reference's G (mirror, translate, scale, rotate, translate), each a map of the sampling grid.
    move = 2 * (whole + frac)                       # sides -> grid units (the grid spans 2)
    cos, sin = np.cos(angle), np.sin(angle)
    a = np.stack([np.stack([flip * cos / scale, -flip * sin / scale], 1),
                  np.stack([sin / scale, cos / scale], 1)], 1)             # [N, 2, 2]
    theta = np.concatenate([a, -move[:, :, None]], 2).astype(np.float32)   # [N, 2, 3]
    return {"theta": theta, "brightness": brightness.reshape(n, 1, 1, 1).astype(np.float32),
            "contrast": contrast.reshape(n, 1, 1, 1).astype(np.float32)}


# ----------------------------------------------------------------------------- T (Paddle ops)

def diffaug_apply(x, d):
    """DiffAugment's color, translation and cutout of images `x` [N, 3, S, S] with the numbers `d`."""
    x = x + d["brightness"]
    mean = x.mean(axis=1, keepdim=True)
    x = (x - mean) * d["saturation"] + mean
    mean = x.mean(axis=[1, 2, 3], keepdim=True)
    x = (x - mean) * d["contrast"] + mean
    # out[i, j] = x[i + dy, j + dx], 0 outside: a shift matrix on each side (exact, differentiable, no gather):
    # rows per image and channel, [N*3, S, S] @ [N*3, S, S], then columns, [N, 3*S, S] @ [N, S, S]. paddle.mm
    # of equal 3-d batches: Paddle 3 builds matmul (and its broadcasting) into PIR programs only.
    n, c, h, w = x.shape
    x = paddle.mm(d["rows"], x.reshape([n * c, h, w]))
    x = paddle.mm(x.reshape([n, c * h, w]), d["cols"]).reshape([n, c, h, w])
    # translation and cutout fill with 0 and keep the range: one clip for the colour ops is enough
    return paddle.clip(x * d["mask"], -1.0, 1.0)


GRID_SAMPLE = dict(mode="bilinear", padding_mode="reflection", align_corners=False)   # ADA's resampling


def grid_sample(x, grid):
    """Bilinear resampling of `x` at `grid`, mirrored at the borders: ADA's geometric map's resampling, the
    reference form (faststep.py's static step passes its legacy-program form of the same op)."""
    return F.grid_sample(x, grid, **GRID_SAMPLE)


def ada_apply(x, d, resample=grid_sample):
    """ADA's geometric map, then its brightness and contrast, on images `x` [N, C, S, S] with the numbers `d`;
    `resample(x, grid)` is grid_sample or a form of it."""
    grid = F.affine_grid(d["theta"], x.shape, align_corners=False)
    x = resample(x, grid)
    return paddle.clip((x + d["brightness"]) * d["contrast"], -1.0, 1.0)


class Augment:
    """T for one run: `kind` none, diffaug or ada (with its probability `p`). Call it on a batch."""

    def __init__(self, kind, p=0.0):
        if kind not in KINDS:
            raise ValueError(f"augmentation {kind!r} is not one of {', '.join(KINDS)}")
        self.kind, self.p = kind, p

    @property
    def active(self):
        return self.kind != "none"

    def draw(self, n, size):
        """The numpy random numbers of T for `n` images of side `size`."""
        return diffaug_draw(n, size) if self.kind == "diffaug" else ada_draw(n, size, self.p)

    def apply(self, x, numbers, resample=grid_sample):
        """T(x) with the drawn numbers (Paddle tensors or static variables of draw()'s shapes); ADA resamples
        with `resample` (grid_sample, or the static step's form of it)."""
        return diffaug_apply(x, numbers) if self.kind == "diffaug" else ada_apply(x, numbers, resample)

    def __call__(self, x):
        if not self.active:
            return x
        numbers = self.draw(x.shape[0], x.shape[-1])
        return self.apply(x, {k: paddle.to_tensor(v) for k, v in numbers.items()})


# ----------------------------------------------------------------------------- ADA's controller

def ada_adjust(p, r_t, batch, target=ADA_TARGET, interval=ADA_INTERVAL, kimg=ADA_KIMG):
    """ADA's p after one adjustment: p + sign(r_t - target) * batch * interval / (kimg * 1000), in [0, 1].

    `batch`: the global batch; `r_t`: E[sign(D(real))] over the last `interval` minibatches.
    """
    return float(np.clip(p + np.sign(r_t - target) * batch * interval / (kimg * 1000), 0.0, 1.0))


class AdaController:
    """Collects sign(D(real)) and moves Augment.p every ADA_INTERVAL minibatches (ada_adjust)."""

    def __init__(self, augment):
        self.augment, self.signs, self.batches, self.r_t = augment, 0.0, 0, None

    def observe(self, sign_mean, batch):
        """Note one minibatch's E[sign(D(real))] (over all processes) of `batch` images in all."""
        if self.augment.kind != "ada":
            return
        self.signs, self.batches = self.signs + sign_mean, self.batches + 1
        if self.batches == ADA_INTERVAL:
            self.r_t = self.signs / self.batches
            self.augment.p = ada_adjust(self.augment.p, self.r_t, batch)
            self.signs, self.batches = 0.0, 0

    def state(self):
        return {"p": self.augment.p, "signs": self.signs, "batches": self.batches, "r_t": self.r_t}

    def load(self, state):
        self.augment.p, self.signs, self.batches, self.r_t = (state["p"], state["signs"], state["batches"],
                                                              state["r_t"])
