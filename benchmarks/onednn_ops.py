"""Which ops of the static training step should run on oneDNN: the step built once per op set and timed
alternately in one process, so that the machine's changing speed falls on every set alike.

faststep.py marks conv2d and conv2d_grad for oneDNN (faststep.ONEDNN_OPS). Each --variant NAME=OP,OP adds
ops to that set; the base set is always timed too. Prints one JSON line: per set its median img/s and the
median over rounds of its ratio to the base set in the same round (> 1: faster). Whether a set still
computes the same numbers is a separate question: tests/test_faststep.py's equivalence tests answer it
(oneDNN's batch_norm, for one, trains to other numbers in these programs; see benchmarks/README.md).

Examples:
    python benchmarks/onednn_ops.py --arch dcgan --variant act=leaky_relu,relu --rounds 10
    python benchmarks/onednn_ops.py --arch dcgan --variant fwd=leaky_relu,relu --variant both=leaky_relu,leaky_relu_grad,relu,relu_grad
    python benchmarks/onednn_ops.py --arch pggan --variant act=leaky_relu --rounds 20 --steps 4
"""
import argparse
import json
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import runtime  # noqa: E402  (before Paddle: thread and MKL settings)
from paddle.base.framework import OpProtoHolder  # noqa: E402

import faststep  # noqa: E402
import network  # noqa: E402
import train_step  # noqa: E402


def parse_variant(text):
    """NAME=OP,OP -> (NAME, [OP, ...]); ValueError with what is wrong."""
    name, sep, ops = text.partition("=")
    ops = [op.strip() for op in ops.split(",") if op.strip()]
    if not sep or not name or not ops:
        raise ValueError(f"--variant takes NAME=OP[,OP...], got {text!r}")
    unknown = [op for op in ops if not OpProtoHolder.instance().has_op_proto(op)]
    if unknown:
        raise ValueError(f"--variant {name}: no Paddle op named {', '.join(unknown)}")
    return name, ops


def measure(cfg, variants, rounds, steps):
    """{name: {ops, img_per_s, ratio_to_base}} for the base set and each variant, timed alternately."""
    sets = {"base": list(faststep.ONEDNN_OPS), **{k: list(faststep.ONEDNN_OPS) + v for k, v in variants.items()}}
    runs = {}
    for name, ops in sets.items():
        step, cfg_, path, _ = train_step.prepare(cfg, onednn=tuple(ops))
        if path != "static":
            raise runtime.ConfigError(f"--arch {cfg.arch} trains on the {path} step here, not the static one")
        step()   # the first run builds oneDNN's primitives
        runs[name] = step
    rates = {name: [] for name in runs}
    for _ in range(rounds):
        for name, step in runs.items():
            t = time.perf_counter()
            for _ in range(steps):
                step()
            rates[name].append(steps * cfg_.batch / (time.perf_counter() - t))
    return cfg_, {name: {"ops": sets[name], "img_per_s": round(statistics.median(r), 2),
                         "ratio_to_base": round(statistics.median(a / b for a, b in zip(r, rates["base"])), 3)}
                  for name, r in rates.items()}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", default="dcgan", choices=list(network.ARCHITECTURES))
    parser.add_argument("--variant", action="append", default=[], metavar="NAME=OP,OP",
                        help="ops to run on oneDNN besides faststep.ONEDNN_OPS (repeatable)")
    parser.add_argument("--rounds", type=int, default=6, help="alternations (default: 6)")
    parser.add_argument("--steps", type=int, default=2, help="training steps per timing (default: 2)")
    for name in ("size", "batch", "width"):
        parser.add_argument("--" + name, type=int, default=None, help="as train_step.py (default: its own)")
    args = parser.parse_args(argv)
    for name in ("rounds", "steps", "size", "batch", "width"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            parser.error(f"--{name} must be at least 1, got {getattr(args, name)}")
    try:
        variants = dict(parse_variant(v) for v in args.variant)
    except ValueError as e:
        parser.error(str(e))
    if not variants:
        parser.error("give at least one --variant NAME=OP,OP to compare with the base set")
    cfg = train_step.StepBenchConfig(arch=args.arch, size=args.size, batch=args.batch, width=args.width,
                                     device="cpu", step="static")
    try:
        cfg, results = measure(cfg, variants, args.rounds, args.steps)
    except runtime.ConfigError as e:
        parser.error(str(e))
    print(json.dumps({"arch": cfg.arch, "size": cfg.size, "batch": cfg.batch, "rounds": args.rounds,
                      "steps": args.steps, "sets": results}))


if __name__ == "__main__":
    main()
