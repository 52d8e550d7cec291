"""Compare training recipes by evaluate.py over several seeds: the README's augmentation table.

For each recipe NAME=FLAGS and each seed it runs

    python train.py FLAGS --seed S --out RUNS/NAME_sS
    python evaluate.py --checkpoint RUNS/NAME_sS/checkpoint.pdparams [--data DATA]

(skipping a run whose metrics.json is already there, so an interrupted comparison continues),
then prints one JSON line per recipe and a Markdown table: the median and range over the seeds
of SWD (x 1e3, the mean over sizes), its ratio to the real/real floor, MS-SSIM and near-copies,
and the training time of each run (wall clock; quote it only from runs on an idle machine).

Examples:
    python benchmarks/recipes.py --recipe "none=--augment none" --recipe "diffaug=--augment diffaug"
    python benchmarks/recipes.py --recipe "ada=--augment ada" --seeds 0,1,2 --runs runs/recipes
    python benchmarks/recipes.py --recipe "pggan=--arch pggan --size 32 --augment diffaug" --seeds 0
"""
import argparse
import json
import os
import shlex
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run(name, flags, seed, runs, data):
    """Train and evaluate one recipe at one seed (unless done); returns its metrics.json and training time."""
    out = os.path.join(runs, f"{name}_s{seed}")
    metrics = os.path.join(out, "metrics.json")
    timing = os.path.join(out, "train_seconds.txt")
    data_flags = ["--data", data] if data else []
    if not os.path.exists(metrics):  # the scripts' own output goes to their stderr (progress) and to RUN/*.txt
        os.makedirs(out, exist_ok=True)
        start = time.perf_counter()
        with open(os.path.join(out, "train.txt"), "w") as log:
            subprocess.run([sys.executable, os.path.join(ROOT, "train.py"), *flags, *data_flags, "--seed", str(seed),
                            "--out", out], check=True, stdout=log)
        with open(timing, "w") as f:
            f.write(f"{time.perf_counter() - start:.1f}\n")
        with open(os.path.join(out, "evaluate.txt"), "w") as log:
            subprocess.run([sys.executable, os.path.join(ROOT, "evaluate.py"), "--checkpoint",
                            os.path.join(out, "checkpoint.pdparams"), *data_flags], check=True, stdout=log)
    with open(metrics) as f:
        result = json.load(f)
    seconds = float(open(timing).read()) if os.path.exists(timing) else None
    return result, seconds


def summary(name, flags, results):
    """Median and range over seeds of a recipe's numbers."""
    def spread(values):
        values = [v for v in values if v is not None]
        return {"median": statistics.median(values), "min": min(values), "max": max(values)} if values else None

    trained = [r["results"]["trained"] for r, _ in results]
    floor = [r["results"]["real (floor)"] for r, _ in results]
    return {"recipe": name, "flags": " ".join(flags), "seeds": len(results),
            "swd": spread([t["swd_x1e3"] for t in trained]),
            "ratio": spread([t["swd_x1e3"] / f["swd_x1e3"] for t, f in zip(trained, floor)]),
            "ms_ssim": spread([t["ms_ssim"] for t in trained]), "real_ms_ssim": floor[0]["ms_ssim"],
            "copies": spread([t["memorization"]["copies"] for t in trained]),
            "per_seed_swd": [round(t["swd_x1e3"], 1) for t in trained],
            "train_seconds": spread([s for _, s in results])}


def markdown(rows):
    def cell(s, fmt):
        return f"{s['median']:{fmt}} ({s['min']:{fmt}}-{s['max']:{fmt}})" if s else "-"
    lines = ["| recipe | flags | SWD | ratio to floor | MS-SSIM | copies |", "| --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        lines.append(f"| {r['recipe']} | `{r['flags']}` | {cell(r['swd'], '.1f')} | {cell(r['ratio'], '.2f')} | "
                     f"{cell(r['ms_ssim'], '.3f')} | {cell(r['copies'], 'g')} |")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipe", action="append", required=True, help="NAME=train.py flags (repeatable)")
    parser.add_argument("--seeds", default="0,1,2", help="comma-separated seeds (default: 0,1,2)")
    parser.add_argument("--runs", default="runs/recipes", help="folder for the runs (default: runs/recipes)")
    parser.add_argument("--data", default=None, help="dataset folder, for train.py and evaluate.py (default: theirs)")
    args = parser.parse_args(argv)
    recipes = []
    for text in args.recipe:
        name, sep, flags = text.partition("=")
        if not sep or not name or "/" in name:
            parser.error(f"--recipe {text!r}: give NAME=FLAGS, as in \"diffaug=--augment diffaug\"")
        recipes.append((name, shlex.split(flags)))
    try:
        seeds = [int(s) for s in args.seeds.split(",")]
    except ValueError:
        parser.error(f"--seeds {args.seeds!r}: give integers separated by commas, as in 0,1,2")
    rows = []
    for name, flags in recipes:
        try:
            results = [run(name, flags, seed, args.runs, args.data) for seed in seeds]
        except subprocess.CalledProcessError as e:
            parser.exit(1, f"recipes.py: {name} failed (exit {e.returncode}): {shlex.join(e.cmd)}\n")
        rows.append(summary(name, flags, results))
        print(json.dumps(rows[-1]))
    print(markdown(rows))


if __name__ == "__main__":
    main()
