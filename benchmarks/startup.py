"""Start-up cost of pretreat.py, whole process: what a user waits for before any image is read.

Times `python pretreat.py --help` and `python pretreat.py` on a dataset that is already up to
date (it checks the source and exits), each in a fresh process, alternating, and reports
the medians and whether the process loaded Paddle. --root points at another checkout, so
that two versions can be measured in the same minutes.

Examples:
    python benchmarks/startup.py
    python benchmarks/startup.py --rounds 10
    git worktree add /tmp/old HEAD~5 && python benchmarks/startup.py --root /tmp/old
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))


def seconds(cmd, cwd):
    """Wall time of one run of `cmd`, which must succeed."""
    t = time.perf_counter()
    subprocess.run(cmd, cwd=cwd, check=True, capture_output=True)
    return time.perf_counter() - t


def loads_paddle(root, cwd, args):
    """Whether pretreat's main, run with `args`, leaves Paddle imported."""
    code = ("import os, runpy, sys; root = sys.argv[1]; sys.path.insert(0, root); sys.argv = sys.argv[1:]\n"
            "try:\n    runpy.run_path(os.path.join(root, 'pretreat.py'), run_name='__main__')\n"
            "except SystemExit:\n    pass\nprint('paddle' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code, root, *args], cwd=cwd, check=True, capture_output=True, text=True)
    return out.stdout.strip().splitlines()[-1] == "True"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", default=os.path.dirname(HERE), help="checkout to measure (default: this one)")
    parser.add_argument("--rounds", type=int, default=7, help="runs of each command (default: 7)")
    args = parser.parse_args(argv)
    if args.rounds < 1:
        parser.error(f"--rounds must be at least 1, got {args.rounds}")
    script = os.path.join(os.path.abspath(args.root), "pretreat.py")
    if not os.path.isfile(script):
        parser.error(f"no pretreat.py in {args.root}: pass the folder of a checkout")
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "data")
        subprocess.run([sys.executable, script, "--out", out], cwd=tmp, check=True, capture_output=True)
        commands = {"help": [sys.executable, script, "--help"], "up_to_date": [sys.executable, script, "--out", out]}
        times = {name: [] for name in commands}
        for _ in range(args.rounds):
            for name, cmd in commands.items():
                times[name].append(seconds(cmd, tmp))
        paddle = {name: loads_paddle(os.path.abspath(args.root), tmp, cmd[2:]) for name, cmd in commands.items()}
    print(json.dumps({"root": os.path.abspath(args.root), "rounds": args.rounds,
                      **{f"{name}_s": round(statistics.median(v), 3) for name, v in times.items()},
                      **{f"{name}_loads_paddle": paddle[name] for name in commands}}))


if __name__ == "__main__":
    main()
