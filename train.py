"""Train the DCGAN of the tutorial on a dataset written by pretreat.py.

One iteration = one real batch: D is updated on real and fake together (--d-steps times),
then G is updated --g-steps times (the tutorial's 1:2). Writes to --out:
    samples/epoch_EEEE_iter_IIIIII.png   fixed-noise grids, every --sample-every iterations
                                         and at each epoch end
    loss.png, log.jsonl                  losses over iterations (one JSON record per line)
    swd.png                              with --eval-every: SWD to the data over iterations
    checkpoint.pdparams                  G, D, optimizers, progress, fixed noise, config and
                                         the architecture's arguments, written atomically
                                         at each epoch end (generator.py reads it)

Defaults are the tutorial's (batch 128, one pass over the data per epoch, width 64) except on
the 100 built-in LFW faces, where batch 64, 6,400 images per epoch, width 32 and mirroring
make `--epochs 8` a few minutes on a laptop CPU. Any flag given wins. On the CPU an iteration
runs as one static program with oneDNN convolutions (faststep.py, same maths; --step dygraph
for Paddle's eager mode).

Examples:
    python train.py --epochs 8                      # the tutorial's run (or the LFW demo)
    python train.py --data data/celeba64 --out runs/celeba --epochs 8 --batch-size 128
    python train.py --epochs 1 --sample-every 50 --device cpu
    python train.py --epochs 8 --eval-every 100          # SWD to the data in log.jsonl and swd.png
"""
import argparse
import io
import json
import os
import sys
import time
from dataclasses import asdict, dataclass, fields, replace

import numpy as np
from tqdm import tqdm

from dataReader import DatasetError, FaceDataset, grid_scale, make_grid, make_loader, to_uint8, write_atomic, write_png

import paddle  # noqa: E402  (after dataReader, which prepares Paddle's threads)
import paddle.nn.functional as F  # noqa: E402

import evaluate  # noqa: E402  (its metrics only; it imports generator and train lazily)
import faststep  # noqa: E402
import network  # noqa: E402

CHECKPOINT_FILE = "checkpoint.pdparams"
CHECKPOINT_FORMAT = "paddle-fakeface-checkpoint/1"
SAMPLE_COUNT = 64  # fixed-noise faces per sample grid
EVAL_COUNT = 1000  # images per set for --eval-every's SWD (at most half the dataset)


@dataclass
class TrainConfig:
    data: str = "data"              # dataset folder written by pretreat.py
    out: str = "output"             # folder for samples, logs and the checkpoint
    arch: str = "dcgan"             # network family, see network.ARCHITECTURES
    size: int = None                # image side; None: the dataset's; smaller ones are area-averaged
    epochs: int = 8                 # the tutorial trains 8 epochs
    batch_size: int = None          # None: 128, the tutorial's (64 on the LFW faces)
    epoch_images: int = None        # images per epoch; None: the dataset once (6,400 on the LFW faces)
    width: int = None               # channels next to the image, ngf = ndf; None: 64 (32 on LFW)
    z_dim: int = 100                # latent size
    lr: float = 2e-4                # Adam learning rate of both networks (Radford et al.)
    beta1: float = 0.5              # Adam beta1; 0.5 steadies GAN training
    beta2: float = 0.999            # Adam beta2
    d_steps: int = 1                # D updates per iteration (real and fake in one step)
    g_steps: int = 2                # G updates per iteration; the tutorial's 2 keeps D from winning
    flip: bool = None               # mirror half the images; None: off (on for the LFW faces)
    seed: int = 0                   # seeds weights, noise and data order
    device: str = "auto"            # auto: the GPU when paddlepaddle-gpu sees one, else the CPU
    sample_every: int = 500         # iterations between sample grids (also at each epoch end)
    eval_every: int = 0             # iterations between SWD measurements (log.jsonl, swd.png); 0: never
    log_every: int = 10             # iterations per log record
    num_workers: int = 0            # loader processes; 0 reads in the training thread (fast enough on a CPU)
    step: str = "auto"              # training step: auto (static on the CPU where it exists), static, dygraph


# Where the dataset is the 100 embedded faces: small enough to train in minutes on a CPU.
EMBEDDED_DEFAULTS = dict(batch_size=64, epoch_images=6400, width=32, flip=True)
TUTORIAL_DEFAULTS = dict(batch_size=128, epoch_images=None, width=64, flip=False)


def resolve_defaults(cfg, manifest):
    """`cfg` with its None fields filled for this dataset: the LFW demo's or the tutorial's."""
    defaults = EMBEDDED_DEFAULTS if manifest.get("embedded") else TUTORIAL_DEFAULTS
    filled = {k: v for k, v in defaults.items() if getattr(cfg, k) is None}
    if filled.get("epoch_images", 0) is None:
        filled["epoch_images"] = manifest["count"]
    return replace(cfg, **filled)


class ConfigError(Exception):
    """Options that cannot work with this dataset or machine; the message says what to change."""


def select_device(name):
    """Set and return Paddle's device: 'gpu' when asked or when auto finds one, else 'cpu'."""
    has_gpu = paddle.device.is_compiled_with_cuda() and paddle.device.cuda.device_count() > 0
    if name == "gpu" and not has_gpu:
        raise ConfigError("--device gpu, but this Paddle sees no GPU: install paddlepaddle-gpu "
                         "(see README) or use --device cpu")
    device = "gpu" if name == "gpu" or (name == "auto" and has_gpu) else "cpu"
    paddle.set_device(device)
    return device


# ----------------------------------------------------------------------------- steps

def choose_step(name, device, arch):
    """The training step ('static' or 'dygraph') that --step `name` means on `device` for `arch`."""
    if name == "auto":
        return "static" if device == "cpu" and arch in faststep.SUPPORTED else "dygraph"
    if name == "static" and device != "cpu":
        raise ConfigError("--step static runs on the CPU only; on a GPU use --step dygraph (or auto)")
    if name == "static" and arch not in faststep.SUPPORTED:
        raise ConfigError(f"--step static has no program for --arch {arch}; use --step dygraph (or auto)")
    return name


def d_step(D, opt_D, real, fake):
    """One D update on a real batch and a fake one (not differentiated into G); returns numbers."""
    # Real and fake go through D separately, so its BatchNorm sees all-real and all-fake batches.
    logits_real, logits_fake = D(real), D(fake.detach())
    loss_D = (F.binary_cross_entropy_with_logits(logits_real, paddle.ones_like(logits_real))
              + F.binary_cross_entropy_with_logits(logits_fake, paddle.zeros_like(logits_fake)))
    opt_D.clear_grad()
    loss_D.backward()
    opt_D.step()
    return {"loss_D": float(loss_D),
            "D_real": float(F.sigmoid(logits_real).mean()),
            "D_fake": float(F.sigmoid(logits_fake).mean())}


def g_step(D, opt_G, fake):
    """One G update from fakes still attached to G's graph: non-saturating BCE(D(fake), 1)."""
    params = [p for p in D.parameters() if not p.stop_gradient]  # not BatchNorm's running statistics
    for p in params:  # D's weight gradients would be thrown away: do not compute them
        p.stop_gradient = True
    try:
        logits = D(fake)
        loss_G = F.binary_cross_entropy_with_logits(logits, paddle.ones_like(logits))
        opt_G.clear_grad()
        loss_G.backward()
        opt_G.step()
    finally:
        for p in params:
            p.stop_gradient = False
    return float(loss_G)


def train_iteration(G, D, opt_G, opt_D, real, z_dim, d_steps=1, g_steps=2):
    """d_steps D updates, then g_steps G updates; returns loss_D, D_real, D_fake, loss_G.

    The first G update reuses the fakes of the first D update, graph and all, as the
    PyTorch DCGAN does: the same maths as a second G forward on the same noise, one forward
    fewer. Further D updates draw fresh fakes without a graph; further G updates fresh noise.
    """
    n = real.shape[0]
    fake = G(paddle.randn([n, z_dim]))
    stats = d_step(D, opt_D, real, fake)
    for _ in range(d_steps - 1):
        with paddle.no_grad():
            more = G(paddle.randn([n, z_dim]))
        stats = d_step(D, opt_D, real, more)
    losses = [g_step(D, opt_G, fake)] + [g_step(D, opt_G, G(paddle.randn([n, z_dim]))) for _ in range(g_steps - 1)]
    return dict(stats, loss_G=float(np.mean(losses)))


def sample(G, z):
    """G's faces for the noise `z`, as uint8 N x H x W x 3, with BatchNorm in inference mode."""
    was_training = G.training
    G.eval()
    with paddle.no_grad():
        images = to_uint8(G(paddle.to_tensor(z)).numpy())
    if was_training:
        G.train()
    return images


# ----------------------------------------------------------------------------- files

def save_checkpoint(path, state):
    """paddle.save `state`, then write it atomically: a crash leaves the old checkpoint intact."""
    buf = io.BytesIO()
    paddle.save(state, buf)
    write_atomic(path, buf.getvalue())


class CheckpointError(Exception):
    """A checkpoint that is missing or not one of ours; the message says what to do."""


def load_checkpoint(path):
    """The checkpoint dict at `path`; raises CheckpointError for a missing or foreign file."""
    if not os.path.isfile(path):
        raise CheckpointError(f"no checkpoint at {path}: run `python train.py` first, or pass --checkpoint")
    try:
        state = paddle.load(path)
    except Exception as e:  # paddle.load raises many types for truncated or foreign files
        raise CheckpointError(f"cannot read checkpoint {path} ({type(e).__name__}): "
                              "it is truncated or not a paddle-fakeface checkpoint")
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path} is not a paddle-fakeface checkpoint")
    return state


def plot_curves(history, keys, ylabel, path):
    """Write the `keys` of the records in `history` over iterations to a PNG (no display needed)."""
    from matplotlib.figure import Figure  # imported here: only plotting needs it

    fig = Figure(figsize=(8, 4), dpi=100)
    ax = fig.add_subplot()
    its = [r["iteration"] for r in history]
    for key, label in keys.items():
        ax.plot(its, [r[key] for r in history], label=label, marker="o" if len(history) < 30 else None)
    ax.set_xlabel("iteration")
    ax.set_ylabel(ylabel)
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    write_atomic(path, buf.getvalue())


# ----------------------------------------------------------------------------- loop

def train(cfg, progress=True):
    """Run the training that `cfg` describes; returns the path of the final checkpoint."""
    # --- data
    dataset = FaceDataset(cfg.data, size=cfg.size)
    cfg = resolve_defaults(cfg, dataset.manifest)
    device = select_device(cfg.device)
    loader = make_loader(dataset, cfg.batch_size, flip=cfg.flip, epoch_images=cfg.epoch_images,
                         seed=cfg.seed, num_workers=cfg.num_workers)
    if len(loader.batch_sampler) == 0:
        raise ConfigError(f"an epoch of {cfg.epoch_images} images holds no batch of {cfg.batch_size}: "
                         "lower --batch-size or raise --epoch-images")

    # --- networks, optimizers, fixed noise
    paddle.seed(cfg.seed)
    G, D = network.build(cfg.arch, size=dataset.size, z_dim=cfg.z_dim, width=cfg.width)
    opt_G = paddle.optimizer.Adam(learning_rate=cfg.lr, beta1=cfg.beta1, beta2=cfg.beta2, parameters=G.parameters())
    opt_D = paddle.optimizer.Adam(learning_rate=cfg.lr, beta1=cfg.beta1, beta2=cfg.beta2, parameters=D.parameters())
    fixed_z = np.random.default_rng(cfg.seed).standard_normal((SAMPLE_COUNT, cfg.z_dim)).astype(np.float32)
    path = choose_step(cfg.step, device, cfg.arch)
    fast = None
    if path == "static":  # it holds the training state while it runs; sync() brings the dygraph objects up to date
        fast = faststep.FastStep(cfg.arch, G.args, cfg.batch_size, cfg.lr, cfg.beta1, cfg.beta2, cfg.d_steps, cfg.g_steps)
        fast.load(G, D, opt_G, opt_D)
    synced = [0]

    def sync():
        if fast is not None and synced[0] != iteration:
            fast.store(G, D, opt_G, opt_D)
            synced[0] = iteration

    # --- output
    samples_dir = os.path.join(cfg.out, "samples")
    os.makedirs(samples_dir, exist_ok=True)
    log_path = os.path.join(cfg.out, "log.jsonl")
    open(log_path, "w").close()  # a new run starts a new log
    checkpoint_path = os.path.join(cfg.out, CHECKPOINT_FILE)
    print(f"training {cfg.arch} {dataset.size}x{dataset.size} on {len(dataset)} images from "
          f"{dataset.manifest['source']} ({device}, {path} step); batch {cfg.batch_size}, {len(loader)} iterations "
          f"per epoch, width {cfg.width}, G {network.count_parameters(G):,} and D "
          f"{network.count_parameters(D):,} parameters", file=sys.stderr)

    eval_history = []
    if cfg.eval_every:  # a fixed real sample and fixed noise, so SWD values compare across iterations
        n_eval = min(EVAL_COUNT, len(dataset) // 2)
        eval_real = dataset.get_uint8(np.sort(np.random.default_rng(cfg.seed).permutation(len(dataset))[:n_eval]))
        eval_z = np.random.default_rng([cfg.seed, 1]).standard_normal((n_eval, cfg.z_dim)).astype(np.float32)

    def measure(epoch, iteration, images_seen):
        sync()
        per_size, mean = evaluate.swd(sample(G, eval_z), eval_real, seed=cfg.seed)
        record = {"epoch": epoch, "iteration": iteration, "images": images_seen,
                  "swd_x1e3": round(mean, 3), "swd_x1e3_per_size": {s: round(v, 3) for s, v in per_size.items()}}
        eval_history.append(record)
        with open(log_path, "a") as f:
            f.write(json.dumps(record) + "\n")
        plot_curves(eval_history, {"swd_x1e3": "SWD x 1e3 (mean over sizes)"}, "SWD x 1e3, lower is better",
                    os.path.join(cfg.out, "swd.png"))

    def save_samples(epoch, iteration):
        sync()
        name = os.path.join(samples_dir, f"epoch_{epoch:04d}_iter_{iteration:06d}.png")
        write_png(name, make_grid(sample(G, fixed_z)), scale=grid_scale(dataset.size))

    # --- loop
    iteration, images_seen, history = 0, 0, []
    interval, t_interval = [], time.perf_counter()
    for epoch in range(1, cfg.epochs + 1):
        loader.batch_sampler.set_epoch(epoch - 1)
        bar = tqdm(loader, desc=f"epoch {epoch}/{cfg.epochs}", unit="it", disable=not progress, leave=False)
        for real in bar:
            if fast is not None:
                stats = fast(real)
            else:
                stats = train_iteration(G, D, opt_G, opt_D, real, cfg.z_dim, cfg.d_steps, cfg.g_steps)
            iteration += 1
            images_seen += real.shape[0]
            interval.append(stats)

            if iteration % cfg.log_every == 0:
                elapsed = time.perf_counter() - t_interval
                record = {"epoch": epoch, "iteration": iteration, "images": images_seen,
                          **{k: round(float(np.mean([s[k] for s in interval])), 5) for k in interval[0]},
                          "img_per_s": round(len(interval) * cfg.batch_size / elapsed, 2)}
                history.append(record)
                with open(log_path, "a") as f:
                    f.write(json.dumps(record) + "\n")
                bar.set_postfix(iter=iteration, loss_D=f"{record['loss_D']:.3f}",
                                loss_G=f"{record['loss_G']:.3f}", img_s=f"{record['img_per_s']:.0f}")
                interval, t_interval = [], time.perf_counter()
            if iteration % cfg.sample_every == 0:
                save_samples(epoch, iteration)
            if cfg.eval_every and iteration % cfg.eval_every == 0:
                measure(epoch, iteration, images_seen)

        # --- end of epoch: samples, plot, checkpoint
        if iteration % cfg.sample_every:
            save_samples(epoch, iteration)
        if history:
            plot_curves(history, {"loss_D": "D", "loss_G": "G"}, "BCE loss", os.path.join(cfg.out, "loss.png"))
        sync()
        save_checkpoint(checkpoint_path, {
            "format": CHECKPOINT_FORMAT,
            "arch": cfg.arch, "arch_args": G.args,
            "G": G.state_dict(), "D": D.state_dict(),
            "opt_G": opt_G.state_dict(), "opt_D": opt_D.state_dict(),
            "epoch": epoch, "iteration": iteration, "images_seen": images_seen,
            "fixed_z": fixed_z, "config": asdict(cfg),
            "dataset": {k: dataset.manifest[k] for k in ("source", "count", "size")},
        })
        last = history[-1] if history else {}
        print(f"epoch {epoch}/{cfg.epochs}: iteration {iteration}, loss_D {last.get('loss_D', float('nan')):.3f}, "
              f"loss_G {last.get('loss_G', float('nan')):.3f}, D(real) {last.get('D_real', float('nan')):.2f}, "
              f"D(fake) {last.get('D_fake', float('nan')):.2f}, {last.get('img_per_s', 0):.0f} img/s", file=sys.stderr)
    return checkpoint_path


# ----------------------------------------------------------------------------- CLI

HELP = {
    "data": "dataset folder written by pretreat.py",
    "out": "folder for samples, loss.png, log.jsonl and checkpoint.pdparams",
    "arch": "network family",
    "size": "image side, a power of two (default: the dataset's; smaller sizes average pixel blocks)",
    "epochs": "passes of --epoch-images images",
    "batch_size": "images per batch (default: 128; 64 on the LFW faces)",
    "epoch_images": "images per epoch (default: the dataset once; 6400 on the LFW faces)",
    "width": "channels next to the image in G and D, ngf = ndf (default: 64; 32 on the LFW faces)",
    "z_dim": "latent size",
    "lr": "Adam learning rate of both networks",
    "beta1": "Adam beta1 (0.5 steadies GAN training)",
    "beta2": "Adam beta2",
    "d_steps": "D updates per iteration, each on the iteration's real batch and fresh fakes",
    "g_steps": "G updates per iteration (the tutorial's 2 keeps D from winning)",
    "flip": "mirror half the images at random (default: off; on for the LFW faces)",
    "seed": "seeds the weights, the noise and the data order",
    "device": "auto picks the GPU when paddlepaddle-gpu sees one",
    "sample_every": "iterations between sample grids (one is also written at each epoch end)",
    "eval_every": "iterations between SWD measurements against a fixed real sample, in log.jsonl and swd.png "
                  "(0: never)",
    "log_every": "iterations per record in log.jsonl",
    "num_workers": "loader processes (0: read in the training thread; more can help a GPU)",
    "step": "static: the iteration as one static program with oneDNN convolutions, about 1.4x dygraph on a "
            "CPU, same maths; dygraph: Paddle's eager mode; auto: static on the CPU where the architecture has it",
}


def parse_args(argv=None):
    """TrainConfig from the command line; bad values are refused with one line and exit 2."""
    cfg = TrainConfig()
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    for f in fields(TrainConfig):
        flag = "--" + f.name.replace("_", "-")
        default = getattr(cfg, f.name)
        shown = "" if default is None else f" (default: {default})"
        if f.name == "flip":
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=None, help=HELP[f.name])
        elif f.name == "arch":
            parser.add_argument(flag, default=default, choices=sorted(network.ARCHITECTURES), help=HELP[f.name] + shown)
        elif f.name == "device":
            parser.add_argument(flag, default=default, choices=["auto", "cpu", "gpu"], help=HELP[f.name] + shown)
        elif f.name == "step":
            parser.add_argument(flag, default=default, choices=["auto", "static", "dygraph"], help=HELP[f.name] + shown)
        else:
            kind = {"size": int, "batch_size": int, "epoch_images": int, "width": int}.get(f.name, type(default))
            parser.add_argument(flag, type=kind, default=default, help=HELP[f.name] + shown)
    cfg = TrainConfig(**vars(parser.parse_args(argv)))
    if cfg.eval_every < 0:
        parser.error(f"--eval-every must be 0 (never) or more, got {cfg.eval_every}")
    for name in ("epochs", "batch_size", "epoch_images", "width", "z_dim", "d_steps", "g_steps",
                 "sample_every", "log_every"):
        value = getattr(cfg, name)
        if value is not None and value < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1, got {value}")
    if cfg.size is not None:
        try:
            network.check_size(cfg.size)
        except ValueError as e:
            parser.error(f"--size: {e}")
    for name in ("lr",):
        if getattr(cfg, name) <= 0:
            parser.error(f"--{name} must be positive, got {getattr(cfg, name)}")
    for name in ("beta1", "beta2"):
        if not 0 <= getattr(cfg, name) < 1:
            parser.error(f"--{name} must be in [0, 1), got {getattr(cfg, name)}")
    if cfg.num_workers < 0:
        parser.error(f"--num-workers must be 0 or more, got {cfg.num_workers}")
    return cfg, parser


def main(argv=None):
    cfg, parser = parse_args(argv)
    try:
        path = train(cfg)
    except (DatasetError, ConfigError) as e:
        parser.exit(2, f"{parser.prog}: error: {e}\n")
    print(f"done: checkpoint {path}, samples in {os.path.join(cfg.out, 'samples')}; "
          f"next: python generator.py --checkpoint {path}")


if __name__ == "__main__":
    main()
