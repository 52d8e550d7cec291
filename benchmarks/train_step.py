"""Training-step speed of one architecture as img/s, comparable with ../shared/bench/torch_reference.py.

One step is train.py's own iteration of the architecture's training method (what the
reference times for dcgan, torchblog and pggan): for the GANs, D updated on a real and a fake
batch, then G updated --g-steps times. It runs the step train.py would run (--step auto: the
static oneDNN program on the CPU where the architecture has one). PG-GAN runs at its final
resolution, stabilised, with its gradient penalty and moving average. Prints one JSON line with
the median img/s of --repeats timings of --steps steps each (and every timing's, in order: "rates").

Sizes not given are the reference's: dcgan 64x64, width 64, batch 128, 1 G update; every other
architecture as train.py trains it on the built-in faces (32x32, or the smallest size it
builds; batch, width and G updates from train.py's defaults; pggan's batch from --batch-sizes).

Examples:
    python benchmarks/train_step.py --arch dcgan --size 64 --batch 128
    python benchmarks/train_step.py --arch torchblog            # 32x32, width 32, batch 64, 2 G updates
    python benchmarks/train_step.py --arch pggan                # 32x32, batch 16, WGAN-GP + moving average
    python benchmarks/train_step.py --step dygraph     # Paddle's eager mode, for the ratio
    python benchmarks/train_step.py --arch torchblog --balance margin --optimizer rmsprop   # the blog's recipe
    python benchmarks/train_step.py --size 32 --batch 64 --width 32 --g-steps 2 --augment diffaug   # the quick start's
    python benchmarks/versus_torch.py                  # this and the reference, alternately
    OMP_NUM_THREADS=1 python benchmarks/train_step.py  # the thread setup's effect
    python benchmarks/train_step.py --arch pggan --steps 5 --repeats 16   # "rates": its two speed levels
"""
import argparse
import json
import os
import statistics
import sys
import time
from dataclasses import dataclass, replace

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import runtime  # noqa: E402  (before Paddle: thread and MKL settings)
import paddle  # noqa: E402

import network  # noqa: E402
import train  # noqa: E402
from balance import BALANCES, OPTIMIZERS  # noqa: E402
from control import Processes  # noqa: E402


@dataclass
class StepBenchConfig:
    arch: str = "dcgan"    # network family
    size: int = None       # image side (None: see the module docstring, as for the three below)
    batch: int = None      # images per batch
    width: int = None      # ngf = ndf, for the architectures that have a width
    g_steps: int = None    # G updates per step, for the BCE GANs
    steps: int = 8         # steps per timing
    warmup: int = 2        # untimed steps first
    repeats: int = 3       # timings; the median is reported
    device: str = "auto"   # auto: the GPU when paddlepaddle-gpu sees one
    step: str = "auto"     # training step, as train.py --step: auto, static or dygraph
    augment: str = "none"  # as train.py --augment: none, diffaug or ada (at p = 0.5 here)
    lecam: float = 0.0     # as train.py --lecam
    ema: int = 0           # 1: as train.py --ema
    balance: str = None    # as train.py --balance (BCE GANs): none, margin, equilibrium, l2
    optimizer: str = None  # as train.py --optimizer (BCE GANs): adam, rmsprop


REFERENCE_SIZES = {"dcgan": dict(size=64, batch=128, width=64, g_steps=1)}   # torch_reference.py's dcgan


def run_config(cfg):
    """(train.TrainConfig of the benchmarked run, cfg with its None sizes filled); ConfigError for a wrong flag."""
    arch = network.architecture(cfg.arch)
    sizes = {**REFERENCE_SIZES.get(cfg.arch, {}),
             **{k: getattr(cfg, k) for k in ("size", "batch", "width", "g_steps") if getattr(cfg, k) is not None}}
    size = sizes.get("size") or next(s for s in (32, 64, 128, 256) if not arch.size_problem(s))
    given = dict(width=sizes.get("width"), g_steps=sizes.get("g_steps"), augment=None if cfg.augment == "none"
                 else cfg.augment, lecam=cfg.lecam or None, ema=bool(cfg.ema) or None, balance=cfg.balance,
                 optimizer=cfg.optimizer)
    if "batch" in sizes and train.applies("batch_size", arch):
        given["batch_size"] = sizes["batch"]
    elif "batch" in sizes:   # PG-GAN has no --batch-size: the batch at every resolution, its final one's
        given["batch_sizes"] = f"4:{sizes['batch']}"
    given = {k: v for k, v in given.items() if v is not None}
    run = train.TrainConfig(arch=cfg.arch, size=size, step=cfg.step, **given)
    train.check_settings(run, None)   # what the architecture lacks is refused, as train.py refuses it
    small = cfg.arch not in REFERENCE_SIZES   # the built-in faces' defaults, or the tutorial's (CelebA's)
    run = train.resolve_defaults(run, {"embedded": small, "count": 100 if small else 202_599}, 1)
    return run, replace(cfg, size=size, width=run.width if train.applies("width", arch) else None,
                        g_steps=run.g_steps if train.applies("g_steps", arch) else None)


def prepare(cfg, **static_options):
    """(step, cfg with its sizes filled, the method's path, device): `step()` runs one training iteration as
    train.py would, on a fixed random batch. `static_options`: faststep.Recording's keyword arguments."""
    device = runtime.select_device(cfg.device)
    run, cfg = run_config(cfg)
    paddle.seed(0)
    method = train.METHODS[network.architecture(cfg.arch).method](run, cfg.arch, cfg.size, Processes())
    method.static_options.update(static_options)
    final = train.Position(images_seen=10 ** 12)  # PG-GAN: its last phase, stabilised; the others ignore it
    most, batch_at, _ = method.batching(cfg.size)
    cfg = replace(cfg, batch=batch_at(final.images_seen) if batch_at else most)
    method.T.p = 0.5  # ADA's transforms at work, as they are once D overfits
    method.start(final, device)
    path = method.path
    real = paddle.uniform([cfg.batch, 3, cfg.size, cfg.size], min=-1, max=1)

    def step():  # train.py's own iteration through the architecture's method; it returns floats: the work is done
        method.step(real, final)

    return step, cfg, path, device


def measure(cfg):
    """Median img/s of cfg.repeats timings of cfg.steps training steps."""
    step, cfg, path, device = prepare(cfg)
    for _ in range(cfg.warmup):
        step()
    rates = []
    for _ in range(cfg.repeats):
        t = time.perf_counter()
        for _ in range(cfg.steps):
            step()
        rates.append(cfg.steps * cfg.batch / (time.perf_counter() - t))
    return {"framework": "paddle", "mode": "train", "arch": cfg.arch, "size": cfg.size, "batch": cfg.batch,
            "g_steps": cfg.g_steps, "augment": cfg.augment, "lecam": cfg.lecam, "ema": cfg.ema,
            "balance": cfg.balance, "optimizer": cfg.optimizer,
            "img_per_s": round(statistics.median(rates), 2), "rates": [round(r, 2) for r in rates],
            "threads": os.environ.get("OMP_NUM_THREADS"), "mkl_cpu_type": os.environ.get("MKL_DEBUG_CPU_TYPE"),
            "path": path, "device": device, "paddle": paddle.__version__}


def main(argv=None):
    cfg = StepBenchConfig()
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    for name, f in StepBenchConfig.__dataclass_fields__.items():
        value = getattr(cfg, name)
        parser.add_argument("--" + name.replace("_", "-"), type=f.type if value is None else type(value),
                            default=value, help=f"(default: {'per architecture' if value is None else value})")
    cfg = StepBenchConfig(**vars(parser.parse_args(argv)))
    if cfg.step not in ("auto", "static", "dygraph"):
        parser.error(f"--step must be auto, static or dygraph, got {cfg.step!r}")
    if cfg.augment not in ("none", "diffaug", "ada"):
        parser.error(f"--augment must be none, diffaug or ada, got {cfg.augment!r}")
    for name, choices in (("balance", BALANCES), ("optimizer", OPTIMIZERS)):
        if getattr(cfg, name) is not None and getattr(cfg, name) not in choices:
            parser.error(f"--{name} must be one of {', '.join(choices)}, got {getattr(cfg, name)!r}")
    if cfg.arch not in network.ARCHITECTURES:
        parser.error(f"--arch must be one of {', '.join(network.ARCHITECTURES)}, got {cfg.arch!r}")
    for name in ("size", "batch", "width", "g_steps", "steps", "repeats"):
        if getattr(cfg, name) is not None and getattr(cfg, name) < 1:
            parser.error(f"--{name} must be at least 1, got {getattr(cfg, name)}")
    try:
        print(json.dumps(measure(cfg)))
    except runtime.ConfigError as e:
        parser.error(str(e))


if __name__ == "__main__":
    main()
