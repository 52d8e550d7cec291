"""Project photos into a trained generator: for each, a latent z whose face G(z) matches it (after
stylegan2-ada-pytorch's projector.py).

Each photo is cropped and resized as pretreat.py does (--crop), to the generator's size. The
start is the encoder's mean for the photo where the checkpoint has one (vae, vaegan), else the
best of --candidates random latents; then Adam moves z for --steps steps, its rate ramped down,
to lower the mean squared error between G(z) and the photo at its own size and at each halving
down to 8x8 (pixels at several scales; no pretrained network can be had offline). Seeded and
deterministic. For each photo PHOTO it writes, to --out:

    NAME_target.png     the photo as the model sees it
    NAME_projected.png  G's face of the projected z
    NAME.npy            the projected z (generator.py --morph A.npy B.npy walks between them)
    compare.png         targets (top row) above their projections

and prints each photo's mean absolute error in grey levels, from the start and after projecting.

Examples:
    python project.py me.jpg friend.jpg --checkpoint output/checkpoint.pdparams --out projected
    python project.py photos/*.jpg --crop tutorial --steps 500 --out projected
    python generator.py --morph projected/me.npy projected/friend.npy --out projected   # morph.gif
"""
import os
import sys
from dataclasses import dataclass

import runtime  # before Paddle: thread and MKL settings; the device option
import numpy as np
import paddle
import paddle.nn.functional as F

import network
import pretreat
from checkpoint import CheckpointError
from facedata import make_grid, grid_scale, to_float, to_uint8, write_png
from generator import load_encoder, load_generator, write_latent
from logs import progress
from options import at_least, build_parser, option, parse, positive, refusing

SMALLEST = 8   # the coarsest scale of the loss


@dataclass
class ProjectConfig:
    photos: list = option(None, "photos to project (any image OpenCV reads)", positional=True, metavar="PHOTO")
    checkpoint: str = option("output/checkpoint.pdparams", "checkpoint written by train.py")
    out: str = option("projected", "folder for the targets, projections, latents and compare.png")
    crop: str = option("center", "as pretreat.py: center (a centred square) or tutorial (CelebA's aligned box)",
                       choices=("center", "tutorial"))
    steps: int = option(300, "optimisation steps per photo", at_least(0))
    lr: float = option(0.05, "Adam's initial learning rate on z", positive)
    candidates: int = option(256, "random latents tried for the start (without an encoder)", at_least(1))
    seed: int = option(0, "seeds the start; the same seed projects to the same latents")
    device: str = option("auto", runtime.DEVICE_HELP, choices=runtime.DEVICES)


def read_photo(path, size, crop):
    """The photo at `path` as pretreat.py makes a dataset image: RGB uint8 size x size x 3; ValueError saying why
    it cannot be used."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise ValueError(f"cannot read {path}: {e.strerror}") from None
    image, problem = pretreat.decode(data, size, crop)
    if image is None:
        raise ValueError(f"{path}: {problem}")
    return image


def pyramid_errors(faces, target):
    """Per face of `faces`, its mean squared error to `target` at their size and at each halving (2x2 averages)
    down to 8x8, summed over the scales."""
    errors = ((faces - target) ** 2).mean(axis=[1, 2, 3])
    while faces.shape[-1] > SMALLEST:
        faces, target = F.avg_pool2d(faces, 2), F.avg_pool2d(target, 2)
        errors = errors + ((faces - target) ** 2).mean(axis=[1, 2, 3])
    return errors


def pyramid_loss(face, target):
    """The loss a projection lowers: pyramid_errors of one face."""
    return pyramid_errors(face, target).sum()


def start_latent(G, E, target, candidates, rng):
    """z to start from: the encoder's mean for `target`, or the random latent of `candidates` nearest it (all drawn
    in one batch: BatchNorm is in inference mode, so each face depends on its own z alone)."""
    with paddle.no_grad():
        if E is not None:
            return E(target)[0].numpy()
        z = rng.standard_normal((candidates, G.args["z_dim"])).astype(np.float32)
        errors = pyramid_errors(G(paddle.to_tensor(z)), target).numpy()
    return z[int(np.argmin(errors))][None]


def project(G, E, photo, steps, lr, candidates, seed):
    """(z [1, z_dim], its face as uint8, mean absolute error in grey levels at the start and at the end) for
    `photo` (uint8 H x W x 3 at G's size): Adam on z, its rate ramped down by a cosine to 0 over the steps."""
    target = paddle.to_tensor(to_float(photo[None]))
    z = paddle.to_tensor(start_latent(G, E, target, candidates, np.random.default_rng(seed)))
    z.stop_gradient = False
    schedule = paddle.optimizer.lr.CosineAnnealingDecay(lr, T_max=max(1, steps))
    opt = paddle.optimizer.Adam(schedule, parameters=[z])

    def error():
        with paddle.no_grad():
            face = to_uint8(G(z).numpy())[0]
        return face, float(np.abs(face.astype(np.float32) - photo).mean())

    first = error()[1]
    for _ in progress(range(steps), desc="project", unit="step", disable=steps == 0):
        opt.clear_grad()
        pyramid_loss(G(z), target).backward()
        opt.step()
        schedule.step()
    face, last = error()
    return z.numpy(), face, first, last


def main(argv=None):
    parser = build_parser(ProjectConfig, __doc__)
    cfg = parse(ProjectConfig, parser, argv)
    photos = cfg.photos
    with refusing(parser, CheckpointError, runtime.ConfigError, ValueError):
        runtime.select_device(cfg.device)
        G, state = load_generator(cfg.checkpoint)
        E = load_encoder(cfg.checkpoint, state) if "E" in network.architecture(state["arch"]).networks else None
        size = G.args["size"] if getattr(G, "res", None) is None else G.res
        images = [read_photo(p, size, cfg.crop) for p in photos]
        names = [os.path.splitext(os.path.basename(p))[0] for p in photos]
        if len(set(names)) < len(names):
            raise ValueError("two photos share a name (" + ", ".join(sorted({n for n in names if names.count(n) > 1}))
                             + "): their files in --out would overwrite each other; rename one")
    os.makedirs(cfg.out, exist_ok=True)
    paddle.seed(cfg.seed)
    targets, faces = [], []
    for i, (name, photo) in enumerate(zip(names, images)):
        z, face, first, last = project(G, E, photo, cfg.steps, cfg.lr, cfg.candidates, cfg.seed + i)
        write_png(os.path.join(cfg.out, f"{name}_target.png"), photo)
        write_png(os.path.join(cfg.out, f"{name}_projected.png"), face)
        write_latent(os.path.join(cfg.out, f"{name}.npy"), z[0])
        targets.append(photo)
        faces.append(face)
        print(f"{name}: {first:.1f} grey levels of mean error at the start, {last:.1f} projected", file=sys.stderr)
    grid = make_grid(np.stack(targets + faces), ncols=len(targets))
    write_png(os.path.join(cfg.out, "compare.png"), grid, scale=grid_scale(size))
    print(f"wrote {len(names)} projections and compare.png (targets above projections) to {cfg.out}",
          file=sys.stderr)


if __name__ == "__main__":
    main()
