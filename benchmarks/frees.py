"""The static step with its tensors freed one by one (Paddle's default) or in batches (faststep's), in one process.

Paddle's CPU executor hands every freed tensor to a garbage-collector thread and wakes it each time, about once
per op; on a 2-core machine, with OpenMP's worker spinning on the other core, that thread takes the main
thread's core (an involuntary context switch of the main thread per op) and the step runs at one of two speeds,
by where the scheduler puts it. faststep frees in batches of faststep.FREE_IN_BATCHES_GB instead.

This script builds train.py's step twice in one process, each with its own flag (FLAGS_eager_delete_tensor_gb),
set again before each timing (in Paddle 3.3 a program's frees follow both the flag its executor was built with
and its current value), and times them alternately, so that both see the same machine. Per timing: img/s, the
main thread's share of a core, its involuntary context switches, and a canary (a fixed one-thread numpy
workload timed just after), which shows when the machine itself slows down. Prints one JSON line: medians,
the median of the paired ratios batched / one by one, and every timing.

Examples:
    python benchmarks/frees.py                          # pggan 32x32, batch 16, 12 alternations of 5 steps
    python benchmarks/frees.py --arch dcgan --steps 2 --repeats 6
    python benchmarks/frees.py --arch torchblog
"""
import argparse
import json
import os
import statistics
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

import runtime  # noqa: E402  (before Paddle: thread and MKL settings)
import numpy as np  # noqa: E402
import paddle  # noqa: E402

import faststep  # noqa: E402
import train_step  # noqa: E402

def main_thread():
    """(CPU seconds, involuntary context switches) of this process's main thread, from /proc (Linux)."""
    task = f"/proc/self/task/{os.getpid()}"
    with open(f"{task}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    with open(f"{task}/status") as f:
        status = dict(line.split(":", 1) for line in f if ":" in line)
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK"), int(status["nonvoluntary_ctxt_switches"])


def canary():
    """Seconds of a fixed one-thread numpy workload."""
    a = np.linspace(0, 1, 200_000, dtype=np.float32)
    t = time.perf_counter()
    for _ in range(200):
        (a * 1.0001 + 0.5).sum()
    return time.perf_counter() - t


def build(arch, gb):
    """(train_step's step of `arch` on the static program, built and first run with frees in batches of `gb` GiB,
    its batch size)."""
    os.environ[faststep.FREES_FLAG] = str(gb)   # faststep leaves a user's setting alone: this script sets it
    paddle.set_flags({faststep.FREES_FLAG: gb})
    step, cfg, path, _ = train_step.prepare(train_step.StepBenchConfig(arch=arch, device="cpu"))
    if path != "static":
        raise ValueError(f"{arch} trains on the {path} step here; this compares the static step's frees")
    step()
    return step, cfg.batch


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", default="pggan", help="an architecture with a static step (default: pggan)")
    parser.add_argument("--steps", type=int, default=5, help="steps per timing (default: 5)")
    parser.add_argument("--repeats", type=int, default=12, help="timings of each way, alternated (default: 12)")
    args = parser.parse_args(argv)
    if args.steps < 1 or args.repeats < 1:
        parser.error("--steps and --repeats must be at least 1")
    if not os.path.isdir("/proc/self/task"):
        parser.error("this benchmark reads per-thread counters from /proc: run it on Linux")
    ways = {"one_by_one": 0.0, "batched": faststep.FREE_IN_BATCHES_GB}
    try:
        steps = {name: build(args.arch, gb) for name, gb in ways.items()}
    except (ValueError, runtime.ConfigError) as e:
        parser.error(str(e))
    batch = steps["batched"][1]
    timings = {name: [] for name in ways}
    for _ in range(args.repeats):
        for name, (step, _) in steps.items():
            paddle.set_flags({faststep.FREES_FLAG: ways[name]})
            cpu, switches = main_thread()
            t = time.perf_counter()
            for _ in range(args.steps):
                step()
            seconds = time.perf_counter() - t
            cpu2, switches2 = main_thread()
            timings[name].append({"img_per_s": round(args.steps * batch / seconds, 2),
                                  "main_thread_cpu": round((cpu2 - cpu) / seconds, 2),
                                  "involuntary_switches_per_step": round((switches2 - switches) / args.steps, 1),
                                  "canary_ms": round(1000 * canary(), 1)})
    medians = {name: {k: statistics.median(t[k] for t in rows) for k in rows[0]} for name, rows in timings.items()}
    ratios = [b["img_per_s"] / o["img_per_s"] for b, o in zip(timings["batched"], timings["one_by_one"])]
    print(json.dumps({"arch": args.arch, "batch": batch, "steps": args.steps, "free_in_batches_gb":
                      ways["batched"], "medians": medians, "ratio_batched_to_one_by_one": round(
                          statistics.median(ratios), 3), "timings": timings, "paddle": paddle.__version__}))


if __name__ == "__main__":
    main()
