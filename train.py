"""Train a face GAN (the tutorial's DCGAN, the Torch blog's, PG-GAN) on a dataset from pretreat.py.

One iteration = one real batch: D is updated on real and fake together (--d-steps times),
then G is updated --g-steps times (the tutorial's 1:2). Writes to --out:
    samples/epoch_EEEE_iter_IIIIII.png   fixed-noise grids, every --sample-every iterations
                                         and at each epoch end
    loss.png, log.jsonl                  losses over iterations (one JSON record per line)
    monitor.png                          the Torch blog's curves: D's errors on reals and fakes,
                                         G's, the --margin band and the skipped updates
    swd.png                              with --eval-every: SWD to the data over iterations
    checkpoint.pdparams                  everything needed to continue (see checkpoint.py),
                                         written atomically every --save-every iterations and
                                         at each epoch end (generator.py reads it)
    checkpoint-IIIIIII.pdparams          with --keep N: the N newest numbered snapshots

Run it again with the same --out and it continues where the checkpoint stopped, with the same
data order and random streams (--resume never starts over). Ctrl-C or SIGTERM finishes the
iteration, saves and exits. A loss or weight that is no longer finite stops the run, keeping
the last good checkpoint. Several processes: python -m paddle.distributed.launch
--nproc_per_node N train.py ... (--batch-size is per process; rank 0 writes the files).

Defaults are the tutorial's (batch 128, one pass over the data per epoch, width 64) except on
the 100 built-in LFW faces, where batch 64, 6,400 images per epoch, width 32 and mirroring
make `--epochs 8` a few minutes on a laptop CPU. Any flag given wins. On the CPU an iteration
runs as one static program with oneDNN convolutions (faststep.py, same maths; --step dygraph
for Paddle's eager mode).

Examples:
    python train.py --epochs 8                      # the tutorial's run (or the LFW demo)
    python train.py --data data/celeba64 --out runs/celeba --epochs 8 --batch-size 128
    python train.py --epochs 12                     # later: the same run, 4 epochs more
    python train.py --epochs 8 --resume never --keep 3   # start over, keeping 3 snapshots
    python train.py --epochs 1 --sample-every 50 --device cpu
    python train.py --epochs 8 --eval-every 100          # SWD to the data in log.jsonl and swd.png
    python -m paddle.distributed.launch --nproc_per_node 2 train.py --epochs 8
    python train.py --arch torchblog --balance margin --optimizer rmsprop --out runs/blog   # the Torch blog
    python train.py --real-label 0.9 --flip-labels 0.05 --balance l2 --out runs/tricks
    python train.py --arch pggan --size 32 --out runs/pggan      # progressive growing, 4 -> 32
"""
import argparse
import contextlib
import io
import json
import os
import re
import signal
import sys
import threading
import time
from dataclasses import asdict, dataclass, fields, replace

import numpy as np
from tqdm import tqdm

import runtime  # noqa: F401  (before Paddle: thread and MKL settings)
from dataReader import make_loader
from facedata import DatasetError, FaceDataset, enlarge, grid_scale, make_grid, to_uint8, write_atomic, write_png

import paddle  # noqa: E402  (after dataReader, which prepares Paddle's threads)
import paddle.nn.functional as F  # noqa: E402

import checkpoint  # noqa: E402
import evaluate  # noqa: E402  (its metrics only; it imports generator and train lazily)
import faststep  # noqa: E402
import network  # noqa: E402
import progressive  # noqa: E402
from balance import BALANCES, OPTIMIZERS, Tricks, make_optimizer  # noqa: E402

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
    z_dim: int = None               # latent size; None: 100 (512 for pggan, the official)
    lr: float = None                # learning rate of both networks; None: Adam 2e-4 (Radford et al.), RMSProp 1e-3
    beta1: float = None             # Adam beta1; None: 0.5, which steadies GAN training (pggan: 0)
    beta2: float = None             # Adam beta2; None: 0.999 (pggan: 0.99)
    d_steps: int = None             # D updates per iteration; None: 1
    g_steps: int = None             # G updates per iteration; None: the tutorial's 2 (pggan: 1)
    flip: bool = None               # mirror half the images; None: off (on for the LFW faces)
    seed: int = 0                   # seeds weights, noise and data order
    device: str = "auto"            # auto: the GPU when paddlepaddle-gpu sees one, else the CPU
    sample_every: int = 500         # iterations between sample grids (also at each epoch end)
    eval_every: int = 0             # iterations between SWD measurements (log.jsonl, swd.png); 0: never
    log_every: int = 10             # iterations per log record
    num_workers: int = 0            # loader processes; 0 reads in the training thread (fast enough on a CPU)
    step: str = "auto"              # training step: auto (static on the CPU where it exists), static, dygraph
    save_every: int = 500           # iterations between checkpoints (also at each epoch end); 0: epoch ends only
    keep: int = 0                   # numbered snapshots kept besides checkpoint.pdparams
    resume: str = "auto"            # auto: continue --out's checkpoint if there is one; never; or a checkpoint path
    optimizer: str = "adam"         # adam (the tutorial's) or rmsprop (the Torch blog's, with its warm-up)
    balance: str = "none"           # none; margin: the blog's skip rule; l2: its adaptive weight decay on D
    margin: float = 0.3             # the skip rule's margin
    real_label: float = 1.0         # D's target for real images; 0.9: one-sided soft labels
    label_jitter: float = 0.0       # +- uniform noise on D's targets
    flip_labels: float = 0.0        # probability of swapping a real/fake target in D's loss
    phase_kimg: float = None        # pggan: thousands of images per fade-in and per stabilisation phase
    batch_sizes: str = None         # pggan: batch size per resolution, "4:64,8:64,16:32,32:32,64:16"
    fmap_base: int = 512            # pggan: channels per resolution nf(res) = min(fmap_base / res, fmap_max)
    fmap_max: int = 64              # pggan: (official: 8192 and 512; these are CPU-sized)


# Where the dataset is the 100 embedded faces: small enough to train in minutes on a CPU.
EMBEDDED_DEFAULTS = dict(batch_size=64, epoch_images=6400, width=32, flip=True)
TUTORIAL_DEFAULTS = dict(batch_size=128, epoch_images=None, width=64, flip=False)


def resolve_defaults(cfg, manifest):
    """`cfg` with its None fields filled for this dataset: the LFW demo's or the tutorial's."""
    defaults = EMBEDDED_DEFAULTS if manifest.get("embedded") else TUTORIAL_DEFAULTS
    unused = ("width", "batch_size") if cfg.arch == "pggan" else ()   # pggan: --fmap-*, --batch-sizes
    filled = {k: v for k, v in defaults.items() if getattr(cfg, k) is None and k not in unused}
    if filled.get("epoch_images", 0) is None:
        filled["epoch_images"] = manifest["count"]
    pggan = cfg.arch == "pggan"
    recipe = dict(z_dim=512 if pggan else 100, beta1=0.0 if pggan else 0.5, beta2=0.99 if pggan else 0.999,
                  d_steps=1, g_steps=1 if pggan else 2, lr=1e-3 if pggan or cfg.optimizer == "rmsprop" else 2e-4,
                  batch_sizes=PGGAN_BATCH_SIZES if pggan else None)
    filled.update({k: v for k, v in recipe.items() if getattr(cfg, k) is None})
    if pggan and cfg.phase_kimg is None:  # one phase per epoch on the LFW faces
        filled["phase_kimg"] = (cfg.epoch_images or filled["epoch_images"]) / 1000 if manifest.get("embedded") else 100
    return replace(cfg, **filled)


PGGAN_BATCH_SIZES = "4:32,8:32,16:16,32:16,64:16"  # CPU-sized: more updates per phase
PGGAN_ONLY = ("phase_kimg", "batch_sizes")                      # settings of --arch pggan alone
NOT_PGGAN = ("width", "batch_size", "balance", "optimizer", "margin", "real_label", "label_jitter", "flip_labels")


def check_arch_settings(cfg, explicit=None):
    """ConfigError for a setting given that the chosen architecture does not use (no silent ignoring)."""
    given = {f.name for f in fields(TrainConfig)} if explicit is None else explicit
    defaults = TrainConfig()
    changed = {k for k in given if getattr(cfg, k) != getattr(defaults, k)}
    if cfg.arch == "pggan":
        wrong = [k for k in NOT_PGGAN if k in changed]
        if (cfg.d_steps, cfg.g_steps) not in ((None, None), (1, 1)):
            wrong.append("d_steps/g_steps")
        hint = "pggan follows the official recipe (WGAN-GP, Adam, one D step per G step, --batch-sizes)"
    else:
        wrong = [k for k in PGGAN_ONLY + ("fmap_base", "fmap_max") if k in changed]
        hint = "only --arch pggan uses them"
    if wrong:
        flags = ", ".join("--" + k.replace("_", "-") for k in wrong)
        raise ConfigError(f"{flags} does not apply to --arch {cfg.arch}: {hint}")


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

def choose_step(name, device, arch, processes=1, plain=True):
    """The training step ('static' or 'dygraph') that --step `name` means on `device` for `arch`.

    `plain`: the tutorial's Adam and BCE with no balancing or label tricks (all the static step does).
    """
    if name == "auto":
        return "static" if device == "cpu" and arch in faststep.SUPPORTED and processes == 1 and plain else "dygraph"
    if name == "static" and not plain:
        raise ConfigError("--step static runs the tutorial's Adam without --balance, --optimizer rmsprop or "
                          "label tricks; use --step dygraph (or auto)")
    if name == "static" and processes > 1:
        raise ConfigError("--step static runs in one process; several processes train with --step dygraph (or auto)")
    if name == "static" and device != "cpu":
        raise ConfigError("--step static runs on the CPU only; on a GPU use --step dygraph (or auto)")
    if name == "static" and arch not in faststep.SUPPORTED:
        raise ConfigError(f"--step static has no program for --arch {arch}; use --step dygraph (or auto)")
    return name


def _bce(logits, target):
    return F.binary_cross_entropy_with_logits(logits, target)


def d_step(D, opt_D, real, fake, reduce=None, tricks=None):
    """One D forward on a real batch and a fake one (not differentiated into G), and D's update.

    Returns the numbers: loss_D, D_real, D_fake (mean probabilities), err_R = BCE(D(real), 1),
    err_F = BCE(D(fake), 0) and update_G, the balancing rule's word on G's update (tricks
    decide whether D and G update; without tricks both always do). `reduce(opt)`, when given,
    averages the gradients of opt's parameters over processes.
    """
    tricks = tricks or Tricks()
    # Real and fake go through D separately, so its BatchNorm sees all-real and all-fake batches.
    logits_real, logits_fake = D(real), D(fake.detach())
    err_real = _bce(logits_real, paddle.ones_like(logits_real))
    err_fake = _bce(logits_fake, paddle.zeros_like(logits_fake))
    update_d, update_g = tricks.decide(float(err_real), float(err_fake))
    if tricks.plain_labels:
        loss_D = err_real + err_fake
    else:
        t_real, t_fake = tricks.targets(logits_real, logits_fake)
        loss_D = _bce(logits_real, t_real) + _bce(logits_fake, t_fake)
    if update_d:
        penalty = tricks.penalty(D)
        opt_D.clear_grad()
        (loss_D if penalty is None else loss_D + penalty).backward()
        if reduce:
            reduce(opt_D)
        tricks.step(opt_D, "D")
    stats = {"loss_D": float(loss_D), "D_real": float(F.sigmoid(logits_real).mean()),
             "D_fake": float(F.sigmoid(logits_fake).mean()), "err_R": float(err_real), "err_F": float(err_fake),
             "update_G": update_g}
    if not update_g:  # G's loss all the same, from this forward: the L2 rule and the log need it
        stats["loss_G"] = float(_bce(logits_fake, paddle.ones_like(logits_fake)))
    return stats


def g_step(D, opt_G, fake, reduce=None, tricks=None):
    """One G update from fakes still attached to G's graph: non-saturating BCE(D(fake), 1)."""
    tricks = tricks or Tricks()
    params = [p for p in D.parameters() if not p.stop_gradient]  # not BatchNorm's running statistics
    for p in params:  # D's weight gradients would be thrown away: do not compute them
        p.stop_gradient = True
    try:
        logits = D(fake)
        loss_G = _bce(logits, paddle.ones_like(logits))
        opt_G.clear_grad()
        loss_G.backward()
        if reduce:
            reduce(opt_G)
        tricks.step(opt_G, "G")
    finally:
        for p in params:
            p.stop_gradient = False
    return float(loss_G)


def train_iteration(G, D, opt_G, opt_D, real, z_dim, d_steps=1, g_steps=2, reduce=None, tricks=None):
    """d_steps D updates, then g_steps G updates; returns loss_D, D_real, D_fake, err_R, err_F, loss_G.

    The first G update reuses the fakes of the first D update, graph and all, as the
    PyTorch DCGAN does: the same maths as a second G forward on the same noise, one forward
    fewer. Further D updates draw fresh fakes without a graph; further G updates fresh noise.
    With `tricks` (balance.Tricks) the balancing rule may skip D's or G's updates; when G's
    are skipped, loss_G is BCE(D(fake), 1) of the D step's forward.
    """
    n = real.shape[0]
    fake = G(paddle.randn([n, z_dim]))
    first = stats = d_step(D, opt_D, real, fake, reduce, tricks)
    for _ in range(d_steps - 1):
        with paddle.no_grad():
            more = G(paddle.randn([n, z_dim]))
        stats = d_step(D, opt_D, real, more, reduce, tricks)
    if first["update_G"]:
        losses = [g_step(D, opt_G, fake, reduce, tricks)] + [
            g_step(D, opt_G, G(paddle.randn([n, z_dim])), reduce, tricks) for _ in range(g_steps - 1)]
        loss_g = float(np.mean(losses))
    else:
        loss_g = first["loss_G"]
    if tricks is not None:
        tricks.after(loss_g)
    return {**{k: v for k, v in stats.items() if k not in ("update_G", "loss_G")}, "loss_G": loss_g}


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

def snapshot_name(iteration):
    """File name of the numbered snapshot that --keep keeps beside checkpoint.pdparams."""
    return f"checkpoint-{iteration:07d}.pdparams"


def prune_snapshots(folder, keep):
    """Delete all but the `keep` newest numbered snapshots in `folder`."""
    snaps = sorted(f for f in os.listdir(folder) if re.fullmatch(r"checkpoint-\d{7}\.pdparams", f))
    for name in snaps[:max(0, len(snaps) - keep)]:
        os.remove(os.path.join(folder, name))


# Settings that shape the trajectory of a run: a resumed run keeps the checkpoint's values.
TRAJECTORY = ("arch", "size", "batch_size", "epoch_images", "width", "z_dim", "lr", "beta1", "beta2",
              "d_steps", "g_steps", "flip", "seed", "optimizer", "balance", "margin", "real_label", "label_jitter",
              "flip_labels", "phase_kimg", "batch_sizes", "fmap_base", "fmap_max")


def resume_config(cfg, state, explicit, path):
    """`cfg` continuing the run of checkpoint `state`: its trajectory settings, this run's others.

    A setting given on the command line (in `explicit`; None means all) that differs from the
    checkpoint's raises ConfigError: the run could not continue the same way.
    """
    old = {**asdict(TrainConfig()), **state["config"]}  # settings newer than the checkpoint: their defaults
    for name in TRAJECTORY:
        given = getattr(cfg, name)
        if (explicit is None or name in explicit) and given is not None and given != old[name]:
            flag = "--" + name.replace("_", "-")
            raise ConfigError(f"{path} was trained with {flag} {old[name]}, not {given}: resume with the same "
                              f"setting, or start a new run with --out elsewhere (or --resume never)")
    return replace(cfg, **{name: old[name] for name in TRAJECTORY})


def check_compatible(state, arch, arch_args, dataset, path):
    """ConfigError unless checkpoint `state` holds networks like these, trained on this dataset."""
    if state["arch"] != arch or state["arch_args"] != arch_args:
        have = ", ".join(f"{k} {v}" for k, v in state["arch_args"].items())
        want = ", ".join(f"{k} {v}" for k, v in arch_args.items())
        raise ConfigError(f"{path} holds a {state['arch']} network ({have}), not the {arch} ({want}) this run "
                          "asks for: use another --out, or --resume never to start over here")
    fingerprint = {k: dataset.manifest[k] for k in ("source", "count", "size")}
    if state["dataset"] != fingerprint:
        raise ConfigError(f"{path} was trained on {state['dataset']['source']} ({state['dataset']['count']} images), "
                          f"not {fingerprint['source']} ({fingerprint['count']}): pass its --data, or use another --out")


def read_history(log_path, iteration):
    """The records of log.jsonl up to `iteration`, the point a resumed run continues from."""
    if not os.path.exists(log_path):
        return []
    with open(log_path) as f:
        records = [json.loads(line) for line in f if line.strip()]
    return [r for r in records if r["iteration"] <= iteration]


class Diverged(Exception):
    """Training produced a non-finite loss or weight; the message says where and what is kept."""


def weight_checks(*nets):
    """Per net, the sum of its parameters' means: not finite as soon as one parameter is not."""
    return [float(paddle.add_n([p.mean() for p in net.parameters()])) for net in nets]


def divergence(stats, checks):
    """A sentence naming the network that diverged and what became non-finite, or None when all is finite.

    Within an iteration D is updated first: a bad loss_D or D weight means D went first (G's
    update then reads D's bad weights); otherwise it was G.
    """
    bad = [k for k in ("loss_D", "loss_G") if not np.isfinite(stats[k])]
    bad += [f"{name}'s weights" for name, v in zip("DG", checks[::-1]) if not np.isfinite(v)]
    if not bad:
        return None
    which = "D" if "loss_D" in bad or "D's weights" in bad else "G"
    return f"{which} diverged: {', '.join(bad)} became non-finite"


class StopRequest:
    """SIGINT / SIGTERM handlers that ask the loop to stop after the current iteration.

    A second Ctrl-C stops at once, without saving (the last checkpoint stays as it was).
    """

    def __init__(self):
        self.signal = None
        self.previous = {}

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self.previous[sig] = signal.signal(sig, self.handle)
        return self

    def handle(self, signum, frame):
        if self.signal is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.signal = signal.Signals(signum).name
        print(f"\n{self.signal}: stopping after this iteration and saving (Ctrl-C again: stop without saving)",
              file=sys.stderr)

    def __exit__(self, *exc):
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)


class Processes:
    """This process's place among those paddle.distributed.launch started (one when run directly)."""

    def __init__(self):
        self.world = int(os.environ.get("PADDLE_TRAINERS_NUM", "1") or 1)
        self.rank = 0
        if self.world > 1:
            import paddle.distributed as dist
            dist.init_parallel_env()
            self.rank, self.dist = dist.get_rank(), dist

    @property
    def main(self):
        return self.rank == 0

    def wrap(self, net):
        """paddle.DataParallel(net) with several processes (it starts them from rank 0's weights)."""
        return paddle.DataParallel(net) if self.world > 1 else net

    def reduce(self, opt):
        """Average the gradients of opt's parameters over the processes."""
        with paddle.no_grad():
            for p in opt._parameter_list:
                if p.grad is not None:
                    self.dist.all_reduce(p.grad)
                    p.grad.scale_(1.0 / self.world)

    def any(self, *flags):
        """For each flag, whether any process raised it (every process gets the same answer)."""
        if self.world == 1:
            return [bool(f) for f in flags]
        t = paddle.to_tensor([float(bool(f)) for f in flags])
        self.dist.all_reduce(t, op=self.dist.ReduceOp.MAX)
        return [bool(v) for v in t.numpy()]

    def share_state(self, *nets):
        """Give every process rank 0's weights and BatchNorm statistics (each tracked its own batches)."""
        if self.world > 1:
            for net in nets:
                for value in net.state_dict().values():
                    self.dist.broadcast(value, src=0)


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


def plot_monitor(history, margin, path):
    """The Torch blog's monitor: D's errors on reals and fakes and G's, with the margin band, and the skips."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(8, 6), dpi=100)
    top, bottom = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [2, 1]})
    its = [r["iteration"] for r in history]
    marker = "o" if len(history) < 30 else None
    for key, label in (("loss_G", "gen: BCE(D(G(z)), real), low when G fools D"),
                       ("err_F", "fake: BCE(D(G(z)), fake), low when D spots fakes"),
                       ("err_R", "real: BCE(D(x), real), low when D knows reals")):
        top.plot(its, [r.get(key, np.nan) for r in history], label=label, marker=marker)
    top.axhspan(margin, 1 - margin, color="0.85", label=f"margin band ({margin:g}, {1 - margin:g})")
    top.set_ylabel("BCE")
    top.legend(fontsize=8)
    top.grid(alpha=0.3)
    for key, label in (("d_skips", "D updates skipped"), ("g_skips", "G updates skipped")):
        bottom.plot(its, [r.get(key, 0) for r in history], label=label, marker=marker)
    bottom.set_xlabel("iteration")
    bottom.set_ylabel("skipped (total)")
    bottom.legend(fontsize=8)
    bottom.grid(alpha=0.3)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    write_atomic(path, buf.getvalue())


# ----------------------------------------------------------------------------- loop

def train(cfg, progress=True, explicit=None):
    """Run (or continue) the training that `cfg` describes; returns the path of the last checkpoint.

    `explicit` names the settings the user gave (None: all of them); on resume the others
    come from the checkpoint. Raises ConfigError, DatasetError, CheckpointError for bad input
    (before anything is written) and Diverged when the losses or weights stop being finite.
    """
    procs = Processes()
    dataset = FaceDataset(cfg.data, size=cfg.size)
    checkpoint_path = os.path.join(cfg.out, checkpoint.FILE)
    resume_from = {"auto": checkpoint_path if os.path.exists(checkpoint_path) else None,
                   "never": None}.get(cfg.resume, cfg.resume)
    state = None
    if resume_from:
        state = checkpoint.load(resume_from)
        cfg = resume_config(cfg, state, explicit, resume_from)
        if cfg.arch not in network.ARCHITECTURES:
            raise ConfigError(f"{resume_from} holds a {cfg.arch!r} network, which this version cannot build: "
                              "use another --out, or --resume never to start over here")
    check_arch_settings(cfg, explicit)
    cfg = resolve_defaults(cfg, dataset.manifest)
    if cfg.size is None:
        cfg = replace(cfg, size=dataset.size)
    device = select_device(cfg.device)
    pggan = cfg.arch == "pggan"
    batch_size_at = None
    if pggan:
        try:
            table = progressive.parse_batch_sizes(cfg.batch_sizes)
            sizes = {r: progressive.batch_size(table, r) for r in network.pggan_channels(dataset.size, 1, 1)}
        except ValueError as e:
            raise ConfigError(f"--batch-sizes {cfg.batch_sizes}: {e}") from None
        if any(b % 4 and b > 4 for b in sizes.values()):
            raise ConfigError(f"--batch-sizes {cfg.batch_sizes}: minibatch stddev takes groups of 4 images, "
                              "so each batch must be a multiple of 4")
        phase_images = max(1, round(cfg.phase_kimg * 1000))
        batch_size_at = lambda shown: sizes[progressive.stage(shown, phase_images, dataset.size)[0]]  # noqa: E731
    largest = max(sizes.values()) if pggan else cfg.batch_size
    if largest * procs.world > len(dataset):
        flag = "--batch-sizes" if pggan else "--batch-size"
        raise ConfigError(f"{flag} {largest}{f' x {procs.world} processes' if procs.world > 1 else ''} "
                          f"is more than the {len(dataset)} images of {cfg.data}: lower it")
    loader = make_loader(dataset, cfg.batch_size or largest, flip=cfg.flip, epoch_images=cfg.epoch_images,
                         seed=cfg.seed, num_workers=cfg.num_workers, rank=procs.rank, replicas=procs.world,
                         batch_size_at=batch_size_at)

    def epoch_length(e, shown):
        loader.batch_sampler.set_epoch(e - 1, shown=shown)
        return len(loader.batch_sampler)

    if epoch_length(1, 0) == 0:
        raise ConfigError(f"an epoch of {cfg.epoch_images} images holds no batch of {largest * procs.world}: "
                         "lower the batch size or raise --epoch-images")

    # --- networks, optimizers, fixed noise (all replaced by the checkpoint's when resuming)
    paddle.seed(cfg.seed)
    arch_args = (dict(size=dataset.size, z_dim=cfg.z_dim, fmap_base=cfg.fmap_base, fmap_max=cfg.fmap_max) if pggan
                 else dict(size=dataset.size, z_dim=cfg.z_dim, width=cfg.width))
    G, D = network.build(cfg.arch, **arch_args)
    G_ema = network.build_generator(cfg.arch, arch_args) if pggan else None  # G's moving average
    if G_ema is not None:
        G_ema.set_state_dict(G.state_dict())
    opt_G = make_optimizer(cfg.optimizer, cfg.lr, cfg.beta1, cfg.beta2, G.parameters())
    opt_D = make_optimizer(cfg.optimizer, cfg.lr, cfg.beta1, cfg.beta2, D.parameters())
    tricks = Tricks(balance=cfg.balance, margin=cfg.margin, optimizer=cfg.optimizer, lr=cfg.lr,
                    real_label=cfg.real_label, label_jitter=cfg.label_jitter, flip_labels=cfg.flip_labels)
    fixed_z = np.random.default_rng(cfg.seed).standard_normal((SAMPLE_COUNT, cfg.z_dim)).astype(np.float32)
    epoch, batch, iteration, images_seen, epoch_shown = 1, 0, 0, 0, 0
    if state is not None:
        check_compatible(state, cfg.arch, G.args, dataset, resume_from)
        G.set_state_dict(state["G"])
        D.set_state_dict(state["D"])
        if G_ema is not None:
            G_ema.set_state_dict(state["G_ema"])
        checkpoint.set_optimizer_state(opt_G, G, state["opt_G"])
        checkpoint.set_optimizer_state(opt_D, D, state["opt_D"])
        fixed_z = state["fixed_z"]
        tricks = Tricks(**{**tricks.state(), **{k: v for k, v in state["method"].items()
                                                if k in ("coef_l2", "d_updates", "g_updates", "d_skips", "g_skips")}})
        epoch, batch, iteration, images_seen = state["epoch"], state["batch"], state["iteration"], state["images_seen"]
        epoch_shown = state["epoch_shown"]
    if batch == epoch_length(epoch, epoch_shown):
        epoch, batch, epoch_shown = epoch + 1, 0, images_seen
    if epoch > cfg.epochs:
        print(f"{resume_from} has finished {epoch - 1} epochs (iteration {iteration}); "
              f"ask for more with --epochs N", file=sys.stderr)
        return resume_from
    path = choose_step(cfg.step, device, cfg.arch, procs.world, plain=tricks.plain)
    fast = None
    if path == "static":  # it holds the training state while it runs; sync() brings the dygraph objects up to date
        fast = faststep.FastStep(cfg.arch, G.args, cfg.batch_size, cfg.lr, cfg.beta1, cfg.beta2, cfg.d_steps, cfg.g_steps)
        fast.load(G, D, opt_G, opt_D)
    G_run, D_run = procs.wrap(G), procs.wrap(D)
    if state is not None:  # last: building networks and the static program draws random numbers
        checkpoint.set_rng_state(state["rng"])
    synced = iteration                                                  # the dygraph objects hold this iteration
    saved_at = iteration if state is not None else None                # iteration of the last checkpoint written

    def sync():
        nonlocal synced
        if fast is not None and synced != iteration:
            fast.store(G, D, opt_G, opt_D)
            synced = iteration

    # --- output (rank 0 writes; a resumed run keeps the log up to its checkpoint)
    samples_dir = os.path.join(cfg.out, "samples")
    log_path = os.path.join(cfg.out, "log.jsonl")
    records = read_history(log_path, iteration) if state is not None else []
    if procs.main:
        os.makedirs(samples_dir, exist_ok=True)
        checkpoint.remove_stale_temporaries(cfg.out)
        write_atomic(log_path, "".join(json.dumps(r) + "\n" for r in records).encode())
        what = f"resuming {resume_from} at epoch {epoch}, iteration {iteration}" if state is not None else "training"
        print(f"{what}: {cfg.arch} {dataset.size}x{dataset.size} on {len(dataset)} images from "
              f"{dataset.manifest['source']} ({device}, {path} step"
              f"{f', {procs.world} processes' if procs.world > 1 else ''}); "
              + (f"batches {cfg.batch_sizes}, {cfg.phase_kimg:g}k images per phase, channels "
                 f"{'/'.join(str(c) for c in G.nf.values())}" if pggan else f"batch {cfg.batch_size}, width {cfg.width}")
              + f", G {network.count_parameters(G):,} and D {network.count_parameters(D):,} parameters",
              file=sys.stderr)
    history = [r for r in records if "loss_D" in r]
    eval_history = [r for r in records if "swd_x1e3" in r]

    def append_log(record):
        with open(log_path, "a") as f:
            f.write(json.dumps(record) + "\n")

    if cfg.eval_every:  # a fixed real sample and fixed noise, so SWD values compare across iterations
        n_eval = min(EVAL_COUNT, len(dataset) // 2)
        eval_real = dataset.get_uint8(np.sort(np.random.default_rng(cfg.seed).permutation(len(dataset))[:n_eval]))
        eval_z = np.random.default_rng([cfg.seed, 1]).standard_normal((n_eval, cfg.z_dim)).astype(np.float32)

    shown_G = G_ema if pggan else G  # the network samples and evaluations draw with

    def faces(z):
        """uint8 faces of shown_G at its current resolution, upsampled to the dataset's for comparison."""
        return enlarge(sample(shown_G, z), dataset.size)

    def measure():
        sync()
        per_size, mean = evaluate.swd(faces(eval_z), eval_real, seed=cfg.seed)
        record = {"epoch": epoch, "iteration": iteration, "images": images_seen,
                  "swd_x1e3": round(mean, 3), "swd_x1e3_per_size": {s: round(v, 3) for s, v in per_size.items()}}
        eval_history.append(record)
        append_log(record)
        plot_curves(eval_history, {"swd_x1e3": "SWD x 1e3 (mean over sizes)"}, "SWD x 1e3, lower is better",
                    os.path.join(cfg.out, "swd.png"))

    def save_samples():
        sync()
        images = sample(shown_G, fixed_z)
        res = f"_{images.shape[1]}px" if pggan else ""
        name = os.path.join(samples_dir, f"epoch_{epoch:04d}_iter_{iteration:06d}{res}.png")
        write_png(name, make_grid(images), scale=grid_scale(images.shape[1]))

    def save():
        """The whole training state, atomically, to checkpoint.pdparams (and a numbered snapshot with --keep)."""
        sync()
        procs.share_state(G, D)
        if not procs.main:
            return
        state = {
            "format": checkpoint.FORMAT, "version": checkpoint.__version__,
            "arch": cfg.arch, "arch_args": G.args,
            "G": G.state_dict(), "D": D.state_dict(), **({"G_ema": G_ema.state_dict()} if pggan else {}),
            "opt_G": checkpoint.optimizer_state(opt_G, G), "opt_D": checkpoint.optimizer_state(opt_D, D),
            "rng": checkpoint.rng_state(),
            "epoch": epoch, "batch": batch, "iteration": iteration, "images_seen": images_seen,
            "epoch_shown": epoch_shown,
            "order": loader.batch_sampler.epoch_order(),
            # balancing options and state (L2 coefficient, update and skip counts), or pggan's stage
            "method": {"stage": dict(zip(("res", "alpha", "phase"), progressive.stage(
                images_seen, phase_images, dataset.size)))} if pggan else tricks.state(),
            "fixed_z": fixed_z, "config": asdict(cfg),
            "dataset": {k: dataset.manifest[k] for k in ("source", "count", "size")},
        }
        checkpoint.save(checkpoint_path, state)
        if cfg.keep:
            checkpoint.save(os.path.join(cfg.out, snapshot_name(iteration)), state)
            prune_snapshots(cfg.out, cfg.keep)

    def run(real):
        nonlocal opt_G, opt_D, phase
        if pggan:
            res, alpha, now = progressive.stage(images_seen, phase_images, dataset.size)
            if now != phase:  # a phase starts: fresh optimizer state, as the official code
                opt_G = make_optimizer("adam", cfg.lr, cfg.beta1, cfg.beta2, G.parameters())
                opt_D = make_optimizer("adam", cfg.lr, cfg.beta1, cfg.beta2, D.parameters())
                phase = now
            stats = progressive.iteration(G_run, D_run, G_ema, opt_G, opt_D, real, cfg.z_dim, res, alpha,
                                          reduce=procs.reduce if procs.world > 1 else None, updates=iteration)
            return dict(stats, res=res, alpha=round(alpha, 4)), weight_checks(G, D)
        if fast is not None:
            stats = fast(real)
            return stats, [stats.pop("G_check"), stats.pop("D_check")]
        if procs.world > 1:  # each process its own noise, a function of (seed, rank, iteration): resumable
            paddle.seed(int(np.random.SeedSequence([cfg.seed, procs.rank, iteration]).generate_state(1)[0]))
        stats = train_iteration(G_run, D_run, opt_G, opt_D, real, cfg.z_dim, cfg.d_steps, cfg.g_steps,
                                reduce=procs.reduce if procs.world > 1 else None, tricks=tricks)
        return stats, weight_checks(G, D)

    # --- loop
    interval, interval_images, t_interval = [], 0, time.perf_counter()
    phase = progressive.stage(images_seen, phase_images, dataset.size)[2] if pggan else None
    stop_hint = "resume with the same command (it continues from " + checkpoint_path + ")"
    with StopRequest() as stop, contextlib.ExitStack() as no_sync:
        if procs.world > 1:  # gradients are averaged by `reduce` after each backward, not by DataParallel's hooks
            no_sync.enter_context(G_run.no_sync())
            no_sync.enter_context(D_run.no_sync())
        for epoch in range(epoch, cfg.epochs + 1):
            order = state["order"] if state is not None and epoch == state["epoch"] and batch else None
            per_epoch = epoch_length(epoch, epoch_shown)
            loader.batch_sampler.set_epoch(epoch - 1, start=batch, order=order, shown=epoch_shown)
            bar = tqdm(loader, desc=f"epoch {epoch}/{cfg.epochs}", unit="it", initial=batch, total=per_epoch,
                       disable=not (progress and procs.main), leave=False)
            for real in bar:
                stats, sums = run(real)
                problem = divergence(stats, sums)
                stopping, diverged = procs.any(stop.signal, problem)
                if diverged:
                    last = (f"{checkpoint_path} (iteration {saved_at})" if saved_at is not None
                            else "no checkpoint (none was saved yet)")
                    raise Diverged(f"training stopped at iteration {iteration + 1}, epoch {epoch}: "
                                   f"{problem or 'another process diverged'}. Kept: {last}. "
                                   "Try a lower --lr, or resume from the checkpoint")
                iteration += 1
                batch += 1
                images_seen += real.shape[0] * procs.world
                interval.append(stats)
                interval_images += real.shape[0] * procs.world

                if procs.main and iteration % cfg.log_every == 0:
                    elapsed = time.perf_counter() - t_interval
                    record = {"epoch": epoch, "iteration": iteration, "images": images_seen,
                              **{k: round(float(np.mean([s[k] for s in interval])), 5) for k in interval[0]},
                              **({"res": stats["res"], "alpha": stats["alpha"]} if pggan else
                                 {"d_skips": tricks.d_skips, "g_skips": tricks.g_skips, "coef_l2": tricks.coef_l2}),
                              "img_per_s": round(interval_images / elapsed, 2)}
                    history.append(record)
                    append_log(record)
                    bar.set_postfix(iter=iteration, loss_D=f"{record['loss_D']:.3f}",
                                    loss_G=f"{record['loss_G']:.3f}", img_s=f"{record['img_per_s']:.0f}")
                    interval, interval_images, t_interval = [], 0, time.perf_counter()
                if procs.main and iteration % cfg.sample_every == 0:
                    save_samples()
                if procs.main and cfg.eval_every and iteration % cfg.eval_every == 0:
                    measure()
                if stopping:
                    save()
                    if procs.main:
                        print(f"{stop.signal or 'stop'} at iteration {iteration} (epoch {epoch}, batch {batch}/"
                              f"{per_epoch}): saved; {stop_hint}", file=sys.stderr)
                    return checkpoint_path
                if cfg.save_every and iteration % cfg.save_every == 0 and batch < per_epoch:
                    save()
                    saved_at = iteration

            # --- end of epoch: samples, plot, checkpoint
            if procs.main and iteration % cfg.sample_every:
                save_samples()
            if procs.main and history:
                plot_curves(history, {"loss_D": "D", "loss_G": "G"}, "WGAN-GP loss" if pggan else "BCE loss",
                            os.path.join(cfg.out, "loss.png"))
                if not pggan:
                    plot_monitor(history, cfg.margin, os.path.join(cfg.out, "monitor.png"))
            save()
            saved_at = iteration
            batch, epoch_shown = 0, images_seen
            if procs.main:
                last = history[-1] if history else None
                numbers = (f"loss_D {last['loss_D']:.3f}, loss_G {last['loss_G']:.3f}, D(real) {last['D_real']:.2f}, "
                           f"D(fake) {last['D_fake']:.2f}, {last['img_per_s']:.0f} img/s"
                           + (f", {last['res']}x{last['res']} alpha {last['alpha']:.2f}" if pggan else "") if last
                           else f"no log record yet (one every {cfg.log_every} iterations)")
                print(f"epoch {epoch}/{cfg.epochs}: iteration {iteration}, {numbers}", file=sys.stderr)
    if procs.main:
        print(f"done: checkpoint {checkpoint_path}, samples in {samples_dir}; "
              f"next: python generator.py --checkpoint {checkpoint_path}")
    return checkpoint_path


# ----------------------------------------------------------------------------- CLI

HELP = {
    "data": "dataset folder written by pretreat.py",
    "out": "folder for samples, loss.png, log.jsonl and checkpoint.pdparams",
    "arch": "network family",
    "size": "image side, a power of two (default: the dataset's; smaller sizes average pixel blocks)",
    "epochs": "passes of --epoch-images images",
    "batch_size": "images per batch and process (default: 128; 64 on the LFW faces)",
    "epoch_images": "images per epoch (default: the dataset once; 6400 on the LFW faces)",
    "width": "channels next to the image in G and D, ngf = ndf (default: 64; 32 on the LFW faces)",
    "z_dim": "latent size (default: 100; 512 for pggan)",
    "lr": "learning rate of both networks (default: 2e-4 for Adam, 1e-3 for RMSProp)",
    "beta1": "Adam beta1 (default: 0.5, which steadies GAN training; 0 for pggan)",
    "beta2": "Adam beta2 (default: 0.999; 0.99 for pggan)",
    "d_steps": "D updates per iteration, each on the iteration's real batch and fresh fakes (default: 1)",
    "g_steps": "G updates per iteration (default: the tutorial's 2, which keeps D from winning; 1 for pggan)",
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
    "save_every": "iterations between checkpoints, so a crash loses at most this many (one is also written at "
                  "each epoch end; 0: epoch ends only)",
    "keep": "numbered snapshots (checkpoint-IIIIIII.pdparams) kept besides checkpoint.pdparams, newest first",
    "resume": "auto: continue the run in --out if it has a checkpoint; never: start over (overwriting it); "
              "or the path of a checkpoint to continue from",
    "optimizer": "adam: the tutorial's; rmsprop: the Torch blog's (decay 0.9), warming up at lr/50 for 10 "
                 "updates and lr/5 until 30",
    "balance": "margin: skip D's update while it wins by a margin and G's while D is lost (the Torch blog); "
               "l2: weight decay on D that grows while G's loss is high; none: the tutorial's",
    "margin": "the margin of --balance margin: D skips below it, G above 1 - margin",
    "real_label": "D's target for real images; 0.9 (soft labels) keeps D from getting overconfident",
    "label_jitter": "uniform noise of +- this on D's targets, so they are never exact",
    "flip_labels": "probability of swapping a real and a fake target in D's loss, a noisy teacher that "
                   "slows D down",
    "phase_kimg": "pggan: thousands of images each new resolution fades in for, and as many it then "
                  "stabilises for (default: one epoch on the LFW faces, 100 otherwise)",
    "batch_sizes": "pggan: RES:BATCH per resolution, smaller batches where images are larger "
                   "(default: " + "4:32,8:32,16:16,32:16,64:16)",
    "fmap_base": "pggan: channels nf(res) = min(fmap_base / res, fmap_max); the official 8192",
    "fmap_max": "pggan: the most channels of a layer; the official 512",
}


def parse_args(argv=None):
    """TrainConfig from the command line; bad values are refused with one line and exit 2."""
    cfg = TrainConfig()
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                     allow_abbrev=False)  # exact flags: a resumed run must know which were given
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
        elif f.name in ("optimizer", "balance"):
            parser.add_argument(flag, default=default, choices=OPTIMIZERS if f.name == "optimizer" else BALANCES,
                                help=HELP[f.name] + shown)
        elif f.name == "step":
            parser.add_argument(flag, default=default, choices=["auto", "static", "dygraph"], help=HELP[f.name] + shown)
        else:
            kind = {"size": int, "batch_size": int, "epoch_images": int, "width": int, "lr": float, "z_dim": int,
                    "beta1": float, "beta2": float, "d_steps": int, "g_steps": int, "phase_kimg": float,
                    "batch_sizes": str}.get(f.name, type(default))
            parser.add_argument(flag, type=kind, default=default, help=HELP[f.name] + shown)
    cfg = TrainConfig(**vars(parser.parse_args(argv)))
    for name in ("eval_every", "save_every", "keep", "num_workers"):
        if getattr(cfg, name) < 0:
            parser.error(f"--{name.replace('_', '-')} must be 0 or more, got {getattr(cfg, name)}")
    for name in ("epochs", "batch_size", "epoch_images", "width", "z_dim", "d_steps", "g_steps",
                 "sample_every", "log_every", "fmap_base", "fmap_max"):
        value = getattr(cfg, name)
        if value is not None and value < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1, got {value}")
    if cfg.size is not None:
        try:
            network.check_size(cfg.size)
        except ValueError as e:
            parser.error(f"--size: {e}")
    if cfg.lr is not None and cfg.lr <= 0:
        parser.error(f"--lr must be positive, got {cfg.lr}")
    for name, low, high in (("margin", 0, 0.5), ("real_label", 0.5, 1.0)):
        if not low < getattr(cfg, name) <= high:
            parser.error(f"--{name.replace('_', '-')} must be in ({low}, {high}], got {getattr(cfg, name)}")
    for name in ("label_jitter", "flip_labels"):
        if not 0 <= getattr(cfg, name) < 0.5:
            parser.error(f"--{name.replace('_', '-')} must be in [0, 0.5), got {getattr(cfg, name)}")
    if cfg.phase_kimg is not None and cfg.phase_kimg <= 0:
        parser.error(f"--phase-kimg must be positive, got {cfg.phase_kimg}")
    if cfg.batch_sizes is not None:
        try:
            progressive.parse_batch_sizes(cfg.batch_sizes)
        except ValueError as e:
            parser.error(f"--batch-sizes: {e}")
    for name in ("beta1", "beta2"):
        if getattr(cfg, name) is not None and not 0 <= getattr(cfg, name) < 1:
            parser.error(f"--{name} must be in [0, 1), got {getattr(cfg, name)}")
    if cfg.resume not in ("auto", "never") and not os.path.isfile(cfg.resume):
        parser.error(f"--resume {cfg.resume}: no such checkpoint file (or use auto / never)")
    problem = unwritable(cfg.out)
    if problem:
        parser.error(f"--out {cfg.out}: {problem}; choose a folder you can write to")
    given = sys.argv[1:] if argv is None else [str(a) for a in argv]
    explicit = {a.dest for a in parser._actions for opt in a.option_strings
                for g in given if g == opt or g.startswith(opt + "=")}
    return cfg, parser, explicit


def unwritable(folder, access=os.access):
    """Why `folder` cannot be written to (without creating it), or None when it can."""
    path = os.path.abspath(folder)
    if os.path.exists(path) and not os.path.isdir(path):
        return "it is a file, not a folder"
    while not os.path.exists(path):
        path = os.path.dirname(path)
    if not os.path.isdir(path):
        return f"{path} is a file, not a folder"
    if not access(path, os.W_OK | os.X_OK):
        return f"no permission to write in {path}"
    return None


def main(argv=None):
    cfg, parser, explicit = parse_args(argv)
    try:
        train(cfg, explicit=explicit)
    except (DatasetError, ConfigError, checkpoint.CheckpointError) as e:
        parser.exit(2, f"{parser.prog}: error: {e}\n")
    except Diverged as e:
        parser.exit(1, f"{parser.prog}: {e}\n")


if __name__ == "__main__":
    main()
