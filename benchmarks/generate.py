"""Generator forward speed (no gradients, BatchNorm in inference mode) as img/s.

Comparable with `../shared/bench/torch_reference.py generate --arch ARCH`: the architecture's
generator at the reference's sizes (dcgan 64x64, width 64; torchblog 32x32, width 32; pggan
32x32 at its final resolution), a batch of noise per step, through generator.py's own path
(exported and run by Paddle Inference with oneDNN, bf16 where it passes generator.py's check)
or --engine dygraph. Prints one JSON line with the median img/s.

Examples:
    python benchmarks/generate.py --batch 64
    python benchmarks/generate.py --arch pggan
    python benchmarks/generate.py --engine dygraph      # Paddle's eager mode, for comparison
    python benchmarks/versus_torch.py --mode generate --arch torchblog
"""
import argparse
import contextlib
import json
import os
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import runtime  # noqa: E402  (before Paddle: thread and MKL settings)
import numpy as np  # noqa: E402
import paddle  # noqa: E402

import generator  # noqa: E402
import network  # noqa: E402
import train_step  # noqa: E402
from options import refusing  # noqa: E402
from checkpoint import FORMAT, save as save_checkpoint  # noqa: E402


@dataclass
class GenBenchConfig:
    arch: str = "dcgan"    # network family
    size: int = None       # image side (None: the reference's, as train_step.py)
    batch: int = 64        # faces per forward pass
    width: int = None      # ngf, for the architectures that have a width (None: the reference's)
    steps: int = 10        # forward passes per timing
    warmup: int = 2        # untimed passes first
    repeats: int = 3       # timings; the median is reported
    device: str = "auto"   # auto: the GPU when paddlepaddle-gpu sees one
    engine: str = "inference"  # inference: generator.py's CPU path; dygraph: Paddle's eager mode


def build(cfg):
    """(G in inference mode, the noise batch it is timed on) at the benchmark's sizes; PG-GAN at its final
    resolution, stabilised."""
    run, sizes = train_step.run_config(train_step.StepBenchConfig(arch=cfg.arch, size=cfg.size, width=cfg.width))
    args = {name: sizes.size if name == "size" else getattr(run, name)
            for name in network.architecture(cfg.arch).args}
    paddle.seed(0)
    G = network.build_net(cfg.arch, "G", args)
    G.eval()
    return G, np.random.default_rng(0).standard_normal((cfg.batch, args["z_dim"])).astype(np.float32)


@contextlib.contextmanager
def generator_path(cfg, G, profile=False):
    """(forward, path name): generator.py's forward for G, z -> uint8 faces (exported into a temporary folder
    and run by Paddle Inference, or eager). profile: Paddle Inference prints its per-op report when the
    predictor is freed, after the block."""
    if cfg.engine == "inference" and not network.architecture(cfg.arch).inference:
        raise runtime.ConfigError(f"--engine inference does not run --arch {cfg.arch} (see network.ARCHITECTURES); "
                                  "use --engine dygraph")
    with tempfile.TemporaryDirectory() as tmp:
        if cfg.engine != "inference":
            yield (lambda v: network.sample(G, v)), "dygraph"
            return
        checkpoint = os.path.join(tmp, "checkpoint.pdparams")
        save_checkpoint(checkpoint, {"format": FORMAT, "arch": cfg.arch, "arch_args": G.args, "G": G.state_dict()})
        forward = generator.fast_generator(G, checkpoint, profile=profile)
        yield forward, "inference-onednn-" + ("bf16" if forward.bf16 else "fp32")


def measure(cfg):
    """Median img/s of generator.py's path (export + Paddle Inference, or eager) on fresh noise."""
    device = runtime.select_device(cfg.device)
    G, z = build(cfg)
    with generator_path(cfg, G) as (forward, path):
        for _ in range(cfg.warmup):
            forward(z)
        rates = []
        for _ in range(cfg.repeats):
            t = time.perf_counter()
            for _ in range(cfg.steps):
                forward(z)  # to uint8 on the host: the work generator.py does per batch
            rates.append(cfg.steps * cfg.batch / (time.perf_counter() - t))
    return {"framework": "paddle", "mode": "generate", "arch": cfg.arch, "size": G.args["size"], "batch": cfg.batch,
            "img_per_s": round(statistics.median(rates), 2), "threads": os.environ.get("OMP_NUM_THREADS"),
            "path": path, "device": device, "paddle": paddle.__version__}


def main(argv=None):
    cfg = GenBenchConfig()
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    for name, value in vars(cfg).items():
        choices = {"engine": ["inference", "dygraph"], "arch": list(network.ARCHITECTURES)}.get(name)
        parser.add_argument("--" + name, type=int if value is None else type(value), default=value, choices=choices,
                            help=f"(default: {'the reference' if value is None else value})")
    cfg = GenBenchConfig(**vars(parser.parse_args(argv)))
    for name in ("size", "batch", "width", "steps", "repeats"):
        if getattr(cfg, name) is not None and getattr(cfg, name) < 1:
            parser.error(f"--{name} must be at least 1, got {getattr(cfg, name)}")
    with refusing(parser, runtime.ConfigError):
        line = measure(cfg)
    print(json.dumps(line))


if __name__ == "__main__":
    main()
