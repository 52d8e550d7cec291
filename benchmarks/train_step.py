"""Training-step speed of one architecture as img/s, comparable with ../shared/bench/torch_reference.py.

One step is what the reference times: D updated on a real and a fake batch, then G updated
--g-steps times (1, as the reference; train.py's default is the tutorial's 2). It runs the
step train.py would run (--step auto: the static oneDNN program on the CPU where the
architecture has one). Prints one JSON line with the median img/s of --repeats timings of
--steps steps each.

Examples:
    python benchmarks/train_step.py --arch dcgan --size 64 --batch 128
    python benchmarks/train_step.py --step dygraph     # Paddle's eager mode, for the ratio
    python benchmarks/train_step.py --size 32 --batch 64 --width 32 --g-steps 2 --augment diffaug   # the quick start's
    python benchmarks/versus_torch.py                  # this and the reference, alternately
    OMP_NUM_THREADS=1 python benchmarks/train_step.py  # the thread setup's effect
"""
import argparse
import json
import os
import statistics
import sys
import time
from dataclasses import dataclass

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import runtime  # noqa: E402  (before Paddle: thread and MKL settings)
import paddle  # noqa: E402

import network  # noqa: E402
import train  # noqa: E402
from control import Processes  # noqa: E402


@dataclass
class StepBenchConfig:
    arch: str = "dcgan"    # network family
    size: int = 64         # image side
    batch: int = 128       # images per batch
    width: int = 64        # ngf = ndf, as the reference
    g_steps: int = 1       # G updates per step (the reference does 1)
    steps: int = 8         # steps per timing
    warmup: int = 2        # untimed steps first
    repeats: int = 3       # timings; the median is reported
    device: str = "auto"   # auto: the GPU when paddlepaddle-gpu sees one
    step: str = "auto"     # training step, as train.py --step: auto, static or dygraph
    augment: str = "none"  # as train.py --augment: none, diffaug or ada (at p = 0.5 here)
    lecam: float = 0.0     # as train.py --lecam
    ema: int = 0           # 1: as train.py --ema


def measure(cfg):
    """Median img/s of cfg.repeats timings of cfg.steps training steps."""
    device = runtime.select_device(cfg.device)
    run = train.TrainConfig(arch=cfg.arch, size=cfg.size, batch_size=cfg.batch, width=cfg.width, g_steps=cfg.g_steps,
                            step=cfg.step, epoch_images=cfg.batch, augment=cfg.augment, lecam=cfg.lecam,
                            ema=bool(cfg.ema))
    run = train.resolve_defaults(run, {"count": cfg.batch}, 1)
    paddle.seed(0)
    method = train.METHODS[network.architecture(cfg.arch).method](run, cfg.arch, cfg.size, Processes())
    method.T.p = 0.5  # ADA's transforms at work, as they are once D overfits
    method.start(train.Position(), device)
    path = method.path
    real = paddle.uniform([cfg.batch, 3, cfg.size, cfg.size], min=-1, max=1)

    def step():  # train.py's own iteration through the architecture's method; it returns floats: the work is done
        method.step(real, train.Position())

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
            "img_per_s": round(statistics.median(rates), 2),
            "threads": os.environ.get("OMP_NUM_THREADS"), "mkl_cpu_type": os.environ.get("MKL_DEBUG_CPU_TYPE"),
            "path": path, "device": device, "paddle": paddle.__version__}


def main(argv=None):
    cfg = StepBenchConfig()
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    for name, value in vars(cfg).items():
        parser.add_argument("--" + name.replace("_", "-"), type=type(value), default=value,
                            help=f"(default: {value})")
    cfg = StepBenchConfig(**vars(parser.parse_args(argv)))
    if cfg.step not in ("auto", "static", "dygraph"):
        parser.error(f"--step must be auto, static or dygraph, got {cfg.step!r}")
    if cfg.augment not in ("none", "diffaug", "ada"):
        parser.error(f"--augment must be none, diffaug or ada, got {cfg.augment!r}")
    for name in ("size", "batch", "width", "steps", "repeats"):
        if getattr(cfg, name) < 1:
            parser.error(f"--{name} must be at least 1, got {getattr(cfg, name)}")
    try:
        print(json.dumps(measure(cfg)))
    except runtime.ConfigError as e:
        parser.error(str(e))


if __name__ == "__main__":
    main()
