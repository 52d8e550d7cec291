"""Does fine-tuning pay? A run that starts from another run's networks (train.py --init-from) against one
from scratch, on a small dataset of other faces: the README's fine-tuning table.

It splits the 100 built-in faces into two folders of 50 photos, the first and the last, and makes each
a dataset as a user would (pretreat.py --src FOLDER --crop center). It trains a source run on the first
50 (--source-iterations); then, per seed, two runs on the other 50 with the same settings and seed, one
from scratch and one with --init-from the source, keeping a snapshot at each iteration of --at; and it
scores every snapshot with evaluate.py against those 50 (25 faces a set). Prints one JSON line per run
and point, then a Markdown table: the median and range over the seeds of SWD (x 1e3) at each point.
A run whose snapshots are already in --runs is not trained again.

Examples:
    python benchmarks/finetune.py                                          # 1,600 + 400 iterations, seeds 0, 1, 2
    python benchmarks/finetune.py --source-iterations 200 --at 50,100 --seeds 0 --runs /tmp/ft
"""
import argparse
import json
import math
import os
import statistics
import subprocess
import sys

import cv2

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import pretreat  # noqa: E402


def script(name, *args, log):
    """Run one of the project's scripts, its output into `log`; CalledProcessError if it fails."""
    with open(log, "w") as f:
        subprocess.run([sys.executable, os.path.join(ROOT, name), *map(str, args)], check=True, stdout=f, stderr=f)


def split_faces(runs, size, parts):
    """Datasets of the built-in faces in `runs`, one per (name, first, stop) of `parts`: faces[first:stop] written as a
    folder of PNG photos and made a dataset as a user would (pretreat.py --src FOLDER --crop center)."""
    faces = pretreat.embedded_faces(size)
    for name, first, stop in parts:
        photos = os.path.join(runs, name + "_photos")
        os.makedirs(photos, exist_ok=True)
        for i, face in enumerate(faces[first:stop], first):
            cv2.imwrite(os.path.join(photos, f"{i:03d}.png"), face[..., ::-1])
        script("pretreat.py", "--src", photos, "--crop", "center", "--size", size, "--out",
               os.path.join(runs, name), log=os.path.join(runs, name + ".txt"))


def train(runs, name, data, iterations, every, seed, extra=()):
    """A run of `iterations` iterations on `data` (batch: all 50 faces) with a snapshot every `every`."""
    out = os.path.join(runs, name)
    if not os.path.exists(os.path.join(out, "checkpoint.pdparams")):
        script("train.py", "--data", data, "--out", out, "--epochs", 1, "--epoch-images", iterations * 50,
               "--save-every", every, "--keep", math.ceil(iterations / every) + 1, "--seed", seed, *extra,
               log=out + ".txt")
    return out


def score(out, iteration, data):
    """evaluate.py's SWD (x 1e3) and MS-SSIM of the snapshot at `iteration` against `data`."""
    metrics = os.path.join(out, f"metrics_{iteration:07d}.json")
    if not os.path.exists(metrics):
        script("evaluate.py", "--checkpoint", os.path.join(out, f"checkpoint-{iteration:07d}.pdparams"), "--data",
               data, "--out", metrics, log=metrics + ".txt")
    with open(metrics) as f:
        result = json.load(f)["results"]
    return result["trained"]["swd_x1e3"], result["trained"]["ms_ssim"], result["real (floor)"]["swd_x1e3"]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", default="runs/finetune", help="folder for the datasets and runs")
    parser.add_argument("--source-iterations", type=int, default=1600, help="the source run's (default: 1600)")
    parser.add_argument("--at", default="100,200,400", help="iterations at which both runs are scored")
    parser.add_argument("--seeds", default="0,1,2", help="seeds of the two runs on the other 50 faces")
    parser.add_argument("--size", type=int, default=32, help="image side (default: 32)")
    args = parser.parse_args(argv)
    try:
        points = sorted(int(v) for v in args.at.split(","))
        seeds = [int(v) for v in args.seeds.split(",")]
    except ValueError:
        parser.error(f"--at and --seeds take numbers like 100,200,400, got {args.at!r} and {args.seeds!r}")
    if min(points) < 1 or args.source_iterations < 1:
        parser.error("--at and --source-iterations must be at least 1")
    os.makedirs(args.runs, exist_ok=True)
    if not os.path.exists(os.path.join(args.runs, "last50", "manifest.json")):
        split_faces(args.runs, args.size, [("first50", 0, 50), ("last50", 50, 100)])
    first, last = (os.path.join(args.runs, name) for name in ("first50", "last50"))
    every = math.gcd(*points)
    source = train(args.runs, "source", first, args.source_iterations, args.source_iterations, 0)
    table = {}
    for seed in seeds:
        for kind, extra in (("scratch", ()), ("fine-tuned", ("--init-from", os.path.join(source, "checkpoint.pdparams")))):
            out = train(args.runs, f"{kind}_s{seed}", last, points[-1], every, seed, extra)
            for point in points:
                swd, ms_ssim, floor = score(out, point, last)
                table.setdefault((kind, point), []).append(swd)
                print(json.dumps({"run": kind, "seed": seed, "iteration": point, "swd_x1e3": round(swd, 1),
                                  "ms_ssim": round(ms_ssim, 3), "floor_swd_x1e3": round(floor, 1)}), flush=True)
    print("| iteration | " + " | ".join(f"{kind} SWD" for kind in ("scratch", "fine-tuned")) + " |")
    print("| --- | --- | --- |")
    for point in points:
        cells = [table[(kind, point)] for kind in ("scratch", "fine-tuned")]
        print(f"| {point} | " + " | ".join(f"{statistics.median(c):.1f} ({min(c):.1f}-{max(c):.1f})" for c in cells)
              + " |")


if __name__ == "__main__":
    main()
