"""Generator forward speed (no gradients, BatchNorm in inference mode) as img/s.

Comparable with `../shared/bench/torch_reference.py generate`: the tutorial's DCGAN-64
generator, a batch of noise per step, through generator.py's own path (exported and run by
Paddle Inference with oneDNN, bf16 where it passes generator.py's check) or --engine dygraph.
Prints one JSON line with the median img/s.

Examples:
    python benchmarks/generate.py --batch 64
    python benchmarks/generate.py --engine dygraph      # Paddle's eager mode, for comparison
    python benchmarks/versus_torch.py --mode generate
"""
import argparse
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
from checkpoint import FORMAT, save as save_checkpoint  # noqa: E402


@dataclass
class GenBenchConfig:
    size: int = 64         # image side
    batch: int = 64        # faces per forward pass
    width: int = 64        # ngf, as the reference
    steps: int = 10        # forward passes per timing
    warmup: int = 2        # untimed passes first
    repeats: int = 3       # timings; the median is reported
    device: str = "auto"   # auto: the GPU when paddlepaddle-gpu sees one
    engine: str = "inference"  # inference: generator.py's CPU path; dygraph: Paddle's eager mode


def measure(cfg):
    """Median img/s of generator.py's path (export + Paddle Inference, or eager) on fresh noise."""
    device = runtime.select_device(cfg.device)
    paddle.seed(0)
    G = network.build_net("dcgan", "G", dict(size=cfg.size, width=cfg.width, z_dim=100))
    G.eval()
    z = np.random.default_rng(0).standard_normal((cfg.batch, 100)).astype(np.float32)
    with tempfile.TemporaryDirectory() as tmp:
        forward, path = (lambda v: network.sample(G, v)), "dygraph"
        if cfg.engine == "inference":
            checkpoint = os.path.join(tmp, "checkpoint.pdparams")
            save_checkpoint(checkpoint, {"format": FORMAT, "arch": "dcgan", "arch_args": G.args, "G": G.state_dict()})
            forward = generator.fast_generator(G, checkpoint)
            path = "inference-onednn-" + ("bf16" if forward.bf16 else "fp32")
        for _ in range(cfg.warmup):
            forward(z)
        rates = []
        for _ in range(cfg.repeats):
            t = time.perf_counter()
            for _ in range(cfg.steps):
                forward(z)  # to uint8 on the host: the work generator.py does per batch
            rates.append(cfg.steps * cfg.batch / (time.perf_counter() - t))
    return {"framework": "paddle", "mode": "generate", "size": cfg.size, "batch": cfg.batch,
            "img_per_s": round(statistics.median(rates), 2), "threads": os.environ.get("OMP_NUM_THREADS"),
            "path": path, "device": device, "paddle": paddle.__version__}


def main(argv=None):
    cfg = GenBenchConfig()
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    for name, value in vars(cfg).items():
        choices = ["inference", "dygraph"] if name == "engine" else None
        parser.add_argument("--" + name, type=type(value), default=value, choices=choices,
                            help=f"(default: {value})")
    cfg = GenBenchConfig(**vars(parser.parse_args(argv)))
    for name in ("size", "batch", "width", "steps", "repeats"):
        if getattr(cfg, name) < 1:
            parser.error(f"--{name} must be at least 1, got {getattr(cfg, name)}")
    print(json.dumps(measure(cfg)))


if __name__ == "__main__":
    main()
