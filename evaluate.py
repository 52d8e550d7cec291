"""How good are the faces? The PG-GAN paper's metrics, which need no pretrained network.

The metrics are metrics.py's: the multi-scale sliced Wasserstein distance (SWD x 1e3, lower is
closer to the data), MS-SSIM of consecutive pairs (lower is more varied; the real set's value is
printed beside it) and near-copies of training faces (nearer than half the typical gap between
two training faces). With --nearest N, nearest.png shows N generated faces, each above the training
face nearest to it: the check a person trusts against memorisation on a small dataset.

The trained G, the same network untrained, and the real floor are compared on equal numbers
of images: --num, at most half the dataset.

Examples:
    python evaluate.py                                         # output/checkpoint.pdparams on data/
    python evaluate.py --checkpoint runs/celeba/checkpoint.pdparams --data data/celeba64 --num 2000
    python evaluate.py --num 50 --out metrics.json --seed 1
    python evaluate.py --nearest 32                            # and nearest.png beside the checkpoint
    python evaluate.py --truncation 0.7 --out truncated.json   # faces drawn as generator.py --truncation 0.7
"""
import os
import sys
from dataclasses import asdict, dataclass

import numpy as np

import runtime  # before Paddle: thread and MKL settings; the --device option
from checkpoint import CheckpointError
from facedata import DatasetError, FaceDataset, grid_scale, make_grid, write_json, write_png
from generator import check_truncation, generate, load_generator, truncation_problem, untrained_like
from metrics import diversity, memorization, nearest_faces, swd
from options import at_least, build_parser, option, parse, refusing


@dataclass
class EvalConfig:
    checkpoint: str = option("output/checkpoint.pdparams", "checkpoint written by train.py")
    data: str = option("data", "dataset folder written by pretreat.py")
    num: int = option(1000, "images per set, at most half the dataset", at_least(2))
    seed: int = option(0, "fixes the noise, patches, directions and the split")
    out: str = option(None, "metrics JSON (default: metrics.json beside the checkpoint)")
    device: str = option("auto", runtime.DEVICE_HELP, choices=runtime.DEVICES)
    nearest: int = option(0, "also write nearest.png beside --out: this many of the generated faces, each above "
                          "its nearest training face (mirrors included); 0: none", at_least(0))
    truncation: float = option(1.0, "score faces drawn with generator.py --truncation PSI (the trained and the "
                               "untrained G's alike)", truncation_problem)


# ----------------------------------------------------------------------------- evaluation

def evaluate(cfg):
    """Metrics of the checkpoint's generator, of the same network untrained, and of the real data."""
    G, state = load_generator(cfg.checkpoint)
    check_truncation(cfg.truncation, state["arch"])
    size = G.args["size"]
    dataset = FaceDataset(cfg.data, size=size)
    n = min(cfg.num, len(dataset) // 2)
    if n < 2:
        raise DatasetError(f"{cfg.data} holds {len(dataset)} images; evaluation needs at least 4")
    order = np.random.default_rng(cfg.seed).permutation(len(dataset))
    real_a = dataset.get_uint8(np.sort(order[:n]))
    real_b = dataset.get_uint8(np.sort(order[n:2 * n]))

    untrained = untrained_like(G, state, cfg.seed)
    psi = cfg.truncation
    fakes = {"trained": generate(G, n, cfg.seed, psi=psi), "untrained": generate(untrained, n, cfg.seed, psi=psi)}

    rows = {}
    for name, images in [*fakes.items(), ("real (floor)", real_b)]:
        per_level, mean = swd(images, real_a, seed=cfg.seed)
        rows[name] = {"swd_x1e3": mean, "swd_x1e3_per_size": per_level, "ms_ssim": diversity(images)}
    for name, images in fakes.items():
        rows[name]["memorization"] = memorization(images, dataset.images, seed=cfg.seed)
    if cfg.nearest:
        write_nearest(nearest_path(cfg), generate(G, cfg.nearest, cfg.seed, psi=psi), dataset.images)
    return {"checkpoint": os.path.abspath(cfg.checkpoint), "epoch": state.get("epoch"),
            "iteration": state.get("iteration"), "data": os.path.abspath(cfg.data), "size": size,
            "images_per_set": n, "results": rows, "config": asdict(cfg)}


def out_path(cfg):
    return cfg.out or os.path.join(os.path.dirname(cfg.checkpoint) or ".", "metrics.json")


def nearest_path(cfg):
    return os.path.join(os.path.dirname(out_path(cfg)) or ".", "nearest.png")


def write_nearest(path, fakes, train, per_row=8):
    """A PNG of strips: a row of generated faces, under it the training face nearest each one."""
    near = nearest_faces(fakes, train)
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    strips = [np.concatenate([fakes[i:i + per_row], near[i:i + per_row]]) for i in range(0, len(fakes), per_row)]
    if len(fakes) > per_row and len(fakes) % per_row:  # a short last strip: pad its two rows to full width
        short = len(fakes) % per_row
        blank = np.full((per_row - short, *fakes.shape[1:]), 255, np.uint8)
        strips[-1] = np.concatenate([fakes[-short:], blank, near[-short:], blank])
    cols = min(per_row, len(fakes))
    write_png(path, make_grid(np.concatenate(strips), ncols=cols), scale=grid_scale(fakes.shape[1]))


def table(metrics):
    """The metrics as a fixed-width text table."""
    sizes = list(next(iter(metrics["results"].values()))["swd_x1e3_per_size"])
    head = f"{'':14}" + "".join(f"{'SWD@' + str(s):>10}" for s in sizes) + f"{'SWD avg':>10}{'MS-SSIM':>10}{'copies':>9}"
    lines = [head]
    for name, r in metrics["results"].items():
        copies = r.get("memorization", {}).get("copies")
        lines.append(f"{name:14}" + "".join(f"{r['swd_x1e3_per_size'][s]:10.1f}" for s in sizes)
                     + f"{r['swd_x1e3']:10.1f}{r['ms_ssim']:10.3f}"
                     + (f"{copies:>6}/{metrics['images_per_set']:<3}" if copies is not None else f"{'':>9}"))
    return "\n".join(lines)


def main(argv=None):
    parser = build_parser(EvalConfig, __doc__)
    cfg = parse(EvalConfig, parser, argv)
    with refusing(parser, CheckpointError, runtime.ConfigError, DatasetError):
        runtime.select_device(cfg.device)
        metrics = evaluate(cfg)
    out = out_path(cfg)
    write_json(out, metrics)
    truncated = f", truncation {cfg.truncation:g}" if cfg.truncation != 1 else ""
    print(f"{metrics['size']}x{metrics['size']}, {metrics['images_per_set']} images per set{truncated}, "
          f"checkpoint at epoch {metrics['epoch']} (SWD x 1e3: lower is closer to the data; "
          f"MS-SSIM: lower is more varied; copies: nearer a training face than half the typical gap)")
    print(table(metrics))
    print(f"wrote {out}" + (f" and {nearest_path(cfg)} (generated faces above their nearest training faces)"
                           if cfg.nearest else ""), file=sys.stderr)


if __name__ == "__main__":
    main()
