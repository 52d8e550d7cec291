"""How well does project.py bring a face into a trained G? The README's projection table.

The built-in faces as a training set of the first 90 (a folder of PNG photos made a dataset with
pretreat.py --crop center) and 10 held out. Each --arch trains on the 90 with its default command
(train.py --arch A --data ...); then each of the 10 held-out faces and 10 of the 90 is projected
(project.project, its defaults) and scored by its mean absolute error in grey levels, against the best
of --random random latents for the same face (the nearest random face) and, for an architecture with
an encoder, the encoder's mean alone. Prints one JSON line per architecture and group, then a
Markdown table: median and range, and on how many faces the projection beat the best random latent.
A run already trained in --runs is not trained again.

Examples:
    python benchmarks/projection.py                                   # dcgan, pggan, vaegan, vae
    python benchmarks/projection.py --arch dcgan --steps 100 --random 200 --runs /tmp/projection
"""
import argparse
import json
import os
import statistics
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)
sys.path.insert(0, HERE)

import runtime  # noqa: E402,F401  (before Paddle: thread and MKL settings)
import paddle  # noqa: E402

import generator  # noqa: E402
import network  # noqa: E402
import project  # noqa: E402
from facedata import FaceDataset  # noqa: E402
from finetune import script, split_faces  # noqa: E402


def mae(faces, photo):
    """Mean absolute error in grey levels of each uint8 face against the uint8 photo."""
    return np.abs(faces.astype(np.float32) - photo.astype(np.float32)).reshape(len(faces), -1).mean(axis=1)


def best_random(G, photo, count, seed):
    """The smallest MAE of `count` random latents' faces against `photo`."""
    z = np.random.default_rng(seed).standard_normal((count, G.args["z_dim"])).astype(np.float32)
    return float(mae(network.sample(G, z), photo).min())


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", default="runs/projection", help="folder for the datasets and runs")
    parser.add_argument("--arch", action="append", help="architectures (repeatable; default: dcgan pggan vaegan vae)")
    parser.add_argument("--steps", type=int, default=300, help="project.py --steps (default: 300)")
    parser.add_argument("--random", type=int, default=1000, help="random latents per face (default: 1000)")
    parser.add_argument("--train", default="", help="extra train.py flags, as one string (to shorten the runs)")
    args = parser.parse_args(argv)
    archs = args.arch or ["dcgan", "pggan", "vaegan", "vae"]
    os.makedirs(args.runs, exist_ok=True)
    data = os.path.join(args.runs, "train90")
    if not os.path.exists(os.path.join(data, "manifest.json")):
        split_faces(args.runs, 32, [("train90", 0, 90), ("held10", 90, 100)])
    rows = []
    for arch in archs:
        out = os.path.join(args.runs, arch)
        if not os.path.exists(os.path.join(out, "checkpoint.pdparams")):
            script("train.py", "--arch", arch, "--data", data, "--out", out, *args.train.split(), log=out + ".txt")
        G, state = generator.load_generator(os.path.join(out, "checkpoint.pdparams"))
        E = generator.load_encoder(os.path.join(out, "checkpoint.pdparams"), state) if "E" in state else None
        size = getattr(G, "res", None) or G.args["size"]
        for group, folder, picked in (("held out", "held10", range(10)), ("training", "train90", range(0, 90, 9))):
            photos = FaceDataset(os.path.join(args.runs, folder), size=size).get_uint8(np.array(list(picked)))
            errors = {"projected": [], "best random": [], "encoder": []}
            for i, photo in enumerate(photos):
                paddle.seed(i)
                _, _, start, last = project.project(G, E, photo, args.steps, 0.05, 256, seed=i)
                errors["projected"].append(last)
                errors["best random"].append(best_random(G, photo, args.random, seed=1000 + i))
                if E is not None:
                    errors["encoder"].append(start)
            beat = sum(p < r for p, r in zip(errors["projected"], errors["best random"]))
            row = {"arch": arch, "faces": group, "beats_best_random": f"{beat}/{len(photos)}",
                   **{k: {"median": round(statistics.median(v), 1), "min": round(min(v), 1), "max": round(max(v), 1)}
                      for k, v in errors.items() if v}}
            rows.append(row)
            print(json.dumps(row), flush=True)
    print("| arch | faces | projected | best of random | encoder's mean | projection better |")
    print("| --- | --- | --- | --- | --- | --- |")
    for r in rows:
        cells = [f"{r[k]['median']} ({r[k]['min']}-{r[k]['max']})" if k in r else "" for k in
                 ("projected", "best random", "encoder")]
        print(f"| {r['arch']} | {r['faces']} | " + " | ".join(cells) + f" | {r['beats_best_random']} |")


if __name__ == "__main__":
    main()
