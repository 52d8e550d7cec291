"""Generate faces with a generator trained by train.py.

Rebuilds the generator from the checkpoint alone (its architecture and arguments are stored
in it) and writes --num faces as 0000.png, 0001.png, ... plus grid.png (the first 100) to
--out. The same --seed gives the same faces; without one a seed is drawn and printed.

Examples:
    python generator.py                                  # 100 faces -> Generate/
    python generator.py --num 16 --seed 7 --out faces/
    python generator.py --checkpoint runs/celeba/checkpoint.pdparams --num 1000
"""
import argparse
import os
import sys
from dataclasses import dataclass

import numpy as np
from tqdm import tqdm

from dataReader import grid_scale, make_grid, write_png
from train import CheckpointError, ConfigError, load_checkpoint, sample, select_device

import network  # noqa: E402  (after dataReader, which prepares Paddle's threads)

GRID_MAX = 100    # faces shown in grid.png
BATCH = 256       # faces generated per forward pass


@dataclass
class GenerateConfig:
    checkpoint: str = "output/checkpoint.pdparams"   # written by train.py
    out: str = "Generate"                            # folder for the PNGs (the tutorial's)
    num: int = 100                                   # faces to write
    seed: int = None                                 # None: drawn at random and printed
    device: str = "auto"                             # auto: the GPU when paddlepaddle-gpu sees one


def load_generator(path):
    """(G in inference mode, checkpoint dict) rebuilt from the checkpoint at `path` alone."""
    state = load_checkpoint(path)
    try:
        G = network.build_generator(state["arch"], state["arch_args"])
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"{path} describes a generator this version cannot build ({e})")
    missing, unexpected = G.set_state_dict(state["G"])
    if missing or unexpected:
        raise CheckpointError(f"{path} does not match its {state['arch']} generator "
                              f"(missing {len(missing)}, unexpected {len(unexpected)} weights)")
    G.eval()
    return G, state


def generate(G, num, seed):
    """`num` faces as uint8 N x H x W x 3, a pure function of (G, num, seed)."""
    z = np.random.default_rng(seed).standard_normal((num, G.args["z_dim"])).astype(np.float32)
    return np.concatenate([sample(G, z[i:i + BATCH])
                           for i in tqdm(range(0, num, BATCH), desc="generate", unit="batch",
                                         disable=num <= BATCH, leave=False)])


def parse_args(argv=None):
    """GenerateConfig from the command line; bad values are refused with one line and exit 2."""
    cfg = GenerateConfig()
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", default=cfg.checkpoint, help=f"checkpoint (default: {cfg.checkpoint})")
    parser.add_argument("--out", default=cfg.out, help=f"folder for the PNGs (default: {cfg.out})")
    parser.add_argument("--num", type=int, default=cfg.num, help=f"faces to write (default: {cfg.num})")
    parser.add_argument("--seed", type=int, default=cfg.seed, help="same seed, same faces (default: random)")
    parser.add_argument("--device", default=cfg.device, choices=["auto", "cpu", "gpu"],
                        help="auto picks the GPU when paddlepaddle-gpu sees one (default: auto)")
    cfg = GenerateConfig(**vars(parser.parse_args(argv)))
    if cfg.num < 1:
        parser.error(f"--num must be at least 1, got {cfg.num}")
    if cfg.seed is not None and cfg.seed < 0:
        parser.error(f"--seed must be 0 or more, got {cfg.seed}")
    return cfg, parser


def main(argv=None):
    cfg, parser = parse_args(argv)
    try:
        select_device(cfg.device)
        G, state = load_generator(cfg.checkpoint)
    except (CheckpointError, ConfigError) as e:
        parser.exit(2, f"{parser.prog}: error: {e}\n")
    seed = cfg.seed if cfg.seed is not None else int(np.random.SeedSequence().entropy % 2**31)
    faces = generate(G, cfg.num, seed)
    os.makedirs(cfg.out, exist_ok=True)
    digits = max(4, len(str(cfg.num - 1)))
    for i, face in enumerate(faces):
        write_png(os.path.join(cfg.out, f"{i:0{digits}d}.png"), face)
    write_png(os.path.join(cfg.out, "grid.png"), make_grid(faces[:GRID_MAX]), scale=grid_scale(faces.shape[1]))
    print(f"wrote {cfg.num} faces of {faces.shape[1]}x{faces.shape[2]} and grid.png to {cfg.out} "
          f"(epoch {state['epoch']} of {state['config']['epochs']}, seed {seed}: "
          f"--seed {seed} writes the same faces again)", file=sys.stderr)


if __name__ == "__main__":
    main()
