"""This project's speed beside the PyTorch reference, measured alternately in the same minutes.

Runs benchmarks/train_step.py (or generate.py) and ../shared/bench/torch_reference.py one
after the other, --rounds times, each in a fresh process, and prints one JSON line with both
medians and the median of the per-round ratios Paddle / PyTorch. Needs `pip install
torch==2.13.0` (never a dependency of this project).

Sizes are the reference's defaults for each --arch (dcgan 64x64, batch 128; torchblog 32x32,
width 32, batch 64, 2 G updates; pggan 32x32, batch 16, stabilised), which train_step.py shares.

Examples:
    python benchmarks/versus_torch.py                          # DCGAN-64 training, batch 128
    python benchmarks/versus_torch.py --arch torchblog         # the Torch blog's GAN on the built-in faces
    python benchmarks/versus_torch.py --arch pggan --rounds 5
    python benchmarks/versus_torch.py --step dygraph           # Paddle's eager training step instead
    python benchmarks/versus_torch.py --mode generate --batch 64
    python benchmarks/versus_torch.py --mode generate --arch pggan
"""
import argparse
import json
import os
import statistics
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
REFERENCE = os.path.join(HERE, "..", "..", "shared", "bench", "torch_reference.py")


def run(args):
    """The last stdout line of a Python script, as JSON."""
    out = subprocess.run([sys.executable, *args], capture_output=True, text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", choices=["dcgan", "torchblog", "pggan"], default="dcgan",
                        help="the architectures the reference has twins of (default: dcgan)")
    parser.add_argument("--mode", choices=["train", "generate"], default="train")
    parser.add_argument("--batch", type=int, default=None,
                        help="default: the reference's (dcgan: 128 to train, 64 to generate)")
    parser.add_argument("--rounds", type=int, default=3, help="alternations (default: 3)")
    parser.add_argument("--step", choices=["auto", "static", "dygraph"], default="auto",
                        help="Paddle's training step, as train.py --step (default: auto)")
    parser.add_argument("--reference", default=REFERENCE, help=f"PyTorch script (default: {REFERENCE})")
    args = parser.parse_args(argv)
    if not os.path.exists(args.reference):
        parser.error(f"no PyTorch reference at {args.reference}: pass --reference PATH")
    if args.batch is not None and args.batch < 1:
        parser.error(f"--batch must be at least 1, got {args.batch}")
    # to train, both scripts default to the reference's batch; to generate, the reference would take 128
    batch = args.batch or (64 if args.mode == "generate" else None)
    sizes = ["--batch", str(batch)] if batch else []
    ours = os.path.join(HERE, "train_step.py" if args.mode == "train" else "generate.py")
    steps = ["--steps", "8", "--step", args.step] if args.mode == "train" else ["--steps", "10"]
    arch = ["--arch", args.arch]
    paddle_runs, torch_runs = [], []
    for _ in range(args.rounds):
        paddle_runs.append(run([ours, *arch, *sizes, *steps, "--repeats", "1"]))
        torch_runs.append(run([args.reference, args.mode, *arch, *sizes, *steps[:2]]))
    p = [r["img_per_s"] for r in paddle_runs]
    t = [r["img_per_s"] for r in torch_runs]
    print(json.dumps({"arch": args.arch, "mode": args.mode, "batch": paddle_runs[0]["batch"], "rounds": args.rounds,
                      "paddle_img_per_s": round(statistics.median(p), 2),
                      "torch_img_per_s": round(statistics.median(t), 2),
                      "ratio_paddle_over_torch": round(statistics.median(a / b for a, b in zip(p, t)), 3),
                      "paddle_path": paddle_runs[0]["path"], "paddle_threads": paddle_runs[0]["threads"],
                      "torch_threads": torch_runs[0].get("threads")}))


if __name__ == "__main__":
    main()
