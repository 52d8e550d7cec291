"""Train a face generator on a dataset from pretreat.py: the tutorial's DCGAN, the Torch blog's GAN, VAE
and VAE/GAN, PG-GAN, and the "Make Your Own GAN" series' GANs (--arch).

One iteration = one real batch, trained by the architecture's method (methods.py): for the
tutorial's DCGAN, D is updated on real and fake together (--d-steps times), then G --g-steps
times (the tutorial's 1:2). Writes to --out:
    samples/epoch_EEEE_iter_IIIIII.png   fixed-noise grids, every --sample-every iterations
                                         and at each epoch end
    loss.png, log.jsonl                  losses over iterations (one JSON record per line)
    monitor.png                          BCE methods: the Torch blog's curves, D's errors on reals
                                         and fakes, G's, the --margin band and the skipped updates
    swd.png                              with --eval-every: SWD to the data over iterations
    progress.gif                         the sample grids as a movie, at most 100 frames spread
                                         over the run (the first and the latest included)
    checkpoint.pdparams                  everything needed to continue (see checkpoint.py),
                                         written atomically every --save-every iterations and
                                         at each epoch end (generator.py reads it)
    checkpoint-IIIIIII.pdparams          with --keep N: the N newest numbered snapshots

Run it again with the same --out and it continues where the checkpoint stopped, with the same
data order and random streams (--resume never starts over). Ctrl-C or SIGTERM finishes the
iteration, saves and exits. A loss or weight that is no longer finite stops the run, keeping
the last good checkpoint. Several processes: python -m paddle.distributed.launch
--nproc_per_node N train.py ... (--batch-size is per process; rank 0 writes the files); several
machines: one launcher on each with --nnodes, the same --master and its own --rank, the same
options and dataset, and --out shared (or copied from rank 0's machine) to resume.

Defaults are the tutorial's (batch 128, one pass over the data per epoch, width 64) except on
small data (the 100 built-in LFW faces, or a dataset of up to 6,400 images: your own photos), where
a global batch of 64 (split among processes; all the images if fewer), 6,400 images per epoch,
width 32, mirroring and the architecture's measured small-data recipe make `--epochs 8` a few
minutes on a laptop CPU. Any flag given wins. On the CPU an iteration runs as one static program with oneDNN convolutions, recorded
from the method's own iteration (faststep.py; every architecture but mlp, which gains too little;
--step dygraph for Paddle's eager mode).

Examples:
    python train.py --epochs 8                      # the tutorial's run (or the LFW demo)
    python train.py --data data/celeba64 --out runs/celeba --epochs 8 --batch-size 128
    python train.py --epochs 12                     # later: the same run, 4 epochs more
    python train.py --epochs 8 --resume never --keep 3   # start over, keeping 3 snapshots
    python train.py --epochs 1 --sample-every 50 --device cpu
    python train.py --epochs 8 --eval-every 100          # SWD to the data in log.jsonl and swd.png
    python -m paddle.distributed.launch --nproc_per_node 2 train.py --epochs 8
    python -m paddle.distributed.launch --nnodes 2 --master 10.0.0.1:8090 --rank 0 train.py   # rank 1 on the other
    python train.py --arch torchblog --balance margin --optimizer rmsprop --out runs/blog   # the Torch blog
    python train.py --real-label 0.9 --flip-labels 0.05 --balance l2 --out runs/tricks
    python train.py --arch pggan --size 32 --out runs/pggan      # progressive growing, 4 -> 32
    python train.py --arch vaegan --out runs/vaegan              # the VAE/GAN, with the equilibrium rule
    python train.py --augment ada --lecam 0.1 --ema --out runs/ada   # augmentation D cannot leak (augment.py)
    python train.py --data mine --init-from runs/celeba/checkpoint.pdparams --out runs/mine   # fine-tune on your photos
"""
import os
import sys
from dataclasses import asdict, dataclass, fields, replace

import runtime  # before Paddle: thread and MKL settings; the device option, ConfigError
import numpy as np
import paddle

import checkpoint
import network
import progressive
from balance import BALANCES, OPTIMIZERS
from control import Diverged, Processes, StopRequest, divergence
from dataReader import make_loader
from facedata import DatasetError, FaceDataset, enlarge, grid_scale, make_grid, write_png
from logs import Interval, RunLog, plot_curves, progress, write_movie
from methods import BCEMethod, VAEGANMethod, VAEMethod
from metrics import swd
from options import at_least, build_parser, flag, option, parse, positive, refusing, within
from runtime import ConfigError

SAMPLE_COUNT = 64  # fixed-noise faces per sample grid
EVAL_COUNT = 1000  # images per set for --eval-every's SWD (at most half the dataset)
METHODS = {"bce": BCEMethod, "progressive": progressive.ProgressiveMethod,   # network.Architecture.method
           "vae": VAEMethod, "vaegan": VAEGANMethod}

# ----------------------------------------------------------------------------- options

def batch_table(v):
    try:
        progressive.parse_batch_sizes(v)
    except ValueError as e:
        return f"{v}: {e}"
    return None


def resumable(v):
    if v in ("auto", "never") or os.path.isfile(v):
        return None
    return f"{v}: no such checkpoint file (or use auto / never)"


def writable(v):
    problem = unwritable(v)
    return f"{v}: {problem}; choose a folder you can write to" if problem else None


def setting(default, help, check=None, choices=None, applies=None, trajectory=False):
    """A TrainConfig field (options.option) that also says where it applies (None: everywhere; "arch": to
    architectures that take it as an argument; else the training methods that use it, a name or a tuple)
    and whether it shapes the run (a resumed run keeps the checkpoint's value)."""
    return option(default, help, check, choices, applies=applies, trajectory=trajectory)


@dataclass
class TrainConfig:
    data: str = setting("data", "dataset folder written by pretreat.py (or its images.npy)")
    out: str = setting("output", "folder for samples, loss.png, log.jsonl and checkpoint.pdparams", writable)
    arch: str = setting("dcgan", "network family (network.ARCHITECTURES)",
                        choices=lambda: sorted(network.ARCHITECTURES), trajectory=True)
    size: int = setting(None, "image side (default: the dataset's; smaller sizes average pixel "
                        "blocks; which sizes an architecture takes is its registry entry's)", at_least(1),
                        trajectory=True)
    epochs: int = setting(8, "passes of --epoch-images images (the tutorial trains 8)", at_least(1))
    batch_size: int = setting(None, "images per batch and process; on small data the default is a global "
                              "batch, split among processes", at_least(1), applies=("bce", "vae", "vaegan"),
                              trajectory=True)
    epoch_images: int = setting(None, "images per epoch", at_least(1), trajectory=True)
    width: int = setting(None, "channels next to the image in G and D, ngf = ndf", at_least(1), applies="arch",
                         trajectory=True)
    z_dim: int = setting(None, "latent size", at_least(1), trajectory=True)
    lr: float = setting(None, "learning rate of both networks", positive, trajectory=True)
    beta1: float = setting(None, "Adam beta1 (0.5 steadies GAN training)", within(0, 1, "[)"), trajectory=True)
    beta2: float = setting(None, "Adam beta2", within(0, 1, "[)"), trajectory=True)
    d_steps: int = setting(None, "D updates per iteration, each on the iteration's real batch and fresh fakes",
                           at_least(1), applies="bce", trajectory=True)
    g_steps: int = setting(None, "G updates per iteration (the tutorial's 2 keeps D from winning)", at_least(1),
                           applies="bce", trajectory=True)
    flip: bool = setting(None, "mirror half the images at random", trajectory=True)
    seed: int = setting(0, "seeds the weights, the noise and the data order", trajectory=True)
    device: str = setting("auto", runtime.DEVICE_HELP, choices=runtime.DEVICES)
    sample_every: int = setting(500, "iterations between sample grids (one is also written at each epoch end)",
                                at_least(1))
    eval_every: int = setting(0, "iterations between SWD measurements against a fixed real sample, in log.jsonl and "
                              "swd.png (0: never)", at_least(0))
    log_every: int = setting(10, "iterations per record in log.jsonl", at_least(1))
    num_workers: int = setting(0, "loader processes (0: read in the training thread, fast enough on a CPU; more can "
                               "help a GPU)", at_least(0))
    step: str = setting("auto", "static: an iteration as one static program with oneDNN convolutions, 1.8-5.8x "
                        "dygraph on a CPU, same maths; dygraph: Paddle's eager mode; auto: static on the CPU in one "
                        "process where the architecture has it (all but mlp)",
                        choices=("auto", "static", "dygraph"))
    save_every: int = setting(500, "iterations between checkpoints, so a crash loses at most this many (one is also "
                              "written at each epoch end; 0: epoch ends only)", at_least(0))
    keep: int = setting(0, "numbered snapshots (checkpoint-IIIIIII.pdparams) kept besides checkpoint.pdparams, "
                        "newest first", at_least(0))
    resume: str = setting("auto", "auto: continue the run in --out if it has a checkpoint; never: start over "
                          "(overwriting it); or the path of a checkpoint to continue from", resumable)
    init_from: str = setting(None, "fine-tune: start this new run (its own --out, any --data) from the networks of "
                             "another run's checkpoint, G's moving average too, with fresh optimizers and schedule; "
                             "the architecture and network arguments are the checkpoint's (PG-GAN starts at its "
                             "resolution)", trajectory=True)
    optimizer: str = setting(None, "adam: the tutorial's; rmsprop: the Torch blog's and the VAE/GAN code's (decay "
                             "0.9), for the blog's GANs warming up at lr/50 for 10 updates and lr/5 until 30",
                             choices=OPTIMIZERS, applies=("bce", "vaegan"), trajectory=True)
    balance: str = setting(None, "margin: skip D's update while it wins by a margin and G's while D is lost (the "
                           "Torch blog); equilibrium: the VAE/GAN code's rule, D's errors kept within 0.68 +- the "
                           "margin; l2: weight decay on D that grows while G's loss is high (GANs only); none: the "
                           "tutorial's", choices=BALANCES, applies=("bce", "vaegan"), trajectory=True)
    margin: float = setting(None, "the margin of --balance margin (D skips below it, G above 1 - margin) or of "
                            "equilibrium (D skips below 0.68 - margin, G above 0.68 + margin)",
                            within(0, 0.5, "(]"), applies=("bce", "vaegan"), trajectory=True)
    real_label: float = setting(1.0, "D's target for real images; 0.9 (soft labels) keeps D from getting "
                                "overconfident", within(0.5, 1.0, "(]"), applies="bce", trajectory=True)
    label_jitter: float = setting(0.0, "uniform noise of +- this on D's targets, so they are never exact",
                                  within(0, 0.5, "[)"), applies="bce", trajectory=True)
    flip_labels: float = setting(0.0, "probability of swapping a real and a fake target in D's loss, a noisy "
                                 "teacher that slows D down", within(0, 0.5, "[)"), applies="bce", trajectory=True)
    gamma: float = setting(None, "weight of the reconstruction error on D's features in the decoder's loss, "
                           "gamma L_llike - L_GAN (Larsen et al.'s gamma)", positive, applies="vaegan", trajectory=True)
    d_reconstructions: bool = setting(False, "D also classifies reconstructions as fakes, as the paper's "
                                      "Algorithm 1", applies="vaegan", trajectory=True)
    augment: str = setting(None, "what D sees of every real and fake: none; diffaug: DiffAugment's color, "
                           "translation and cutout; ada: ADA's mirror, translations, scale, rotation, brightness and "
                           "contrast, each with a probability p that follows D's overfitting (augment.py)",
                           choices=("none", "diffaug", "ada"), applies=("bce", "progressive", "vaegan"),
                           trajectory=True)
    lecam: float = setting(None, "weight of LeCam's regulariser on D (its outputs held near their moving averages; "
                           "0: off)", at_least(0), applies=("bce", "progressive"), trajectory=True)
    ema: bool = setting(None, "sample, evaluate and generate with an exponential moving average of G's weights "
                        "(beta 0.999 with a warm-up); PG-GAN always does", applies="bce", trajectory=True)
    phase_kimg: float = setting(None, "thousands of images each new resolution fades in for, and as many it then "
                                "stabilises for", positive, applies="progressive", trajectory=True)
    batch_sizes: str = setting(None, "RES:BATCH per resolution and process, smaller batches where images are "
                               "larger", batch_table, applies="progressive", trajectory=True)
    fmap_base: int = setting(256, "channels per resolution as the official code, nf(stage) = min(fmap_base / "
                             "2^stage, fmap_max) with 4x4 at stage 1; the paper's 8192",
                             at_least(1), applies="arch", trajectory=True)
    fmap_max: int = setting(64, "the most channels of a layer; the official 512", at_least(1), applies="arch",
                            trajectory=True)


FIELDS = {f.name: f for f in fields(TrainConfig)}
# Where the dataset is small (the 100 built-in faces, or a folder of your own photos of up to SMALL_DATA images):
# batch 64, 6,400 images an epoch, width 32, mirroring and the architecture's measured small-data recipe, which
# train such data in minutes on a CPU. The batch is global there: each of N processes takes 1/N of it.
SMALL_DEFAULTS = dict(batch_size=64, epoch_images=6400, width=32, flip=True)
# Up to this many images the small-data defaults apply. At or below it one pass over the data is at most a small-data
# epoch (6,400 images), so the tutorial's epoch of one pass would be shorter than that, and its batch of 128 leaves
# a few dozen updates a pass; and it is where ADA's paper found augmentation decisive (FFHQ subsets of 1k-10k images).
SMALL_DATA = SMALL_DEFAULTS["epoch_images"]
SINCE = dict(augment="none", lecam=0.0, ema=False, init_from=None)   # settings added later: what checkpoints
#                                                                      before them trained with
TUTORIAL_DEFAULTS = dict(batch_size=128, epoch_images=None, width=64, flip=False)   # None: the dataset once


def applies(name, arch):
    """Whether setting `name` means anything for architecture `arch` (a network.Architecture)."""
    where = FIELDS[name].metadata["applies"]
    if where == "arch":
        return name in arch.args
    return where is None or arch.method in ((where,) if isinstance(where, str) else where)


def check_settings(cfg, explicit):
    """ConfigError for a setting given (in `explicit`; None: all) that the chosen architecture does not use."""
    arch = network.architecture(cfg.arch)
    wrong = [name for name, f in FIELDS.items() if (explicit is None or name in explicit)
             and getattr(cfg, name) != f.default and not applies(name, arch)]
    if wrong:
        users = [a for a, entry in network.ARCHITECTURES.items() if all(applies(n, entry) for n in wrong)]
        raise ConfigError(f"{', '.join(flag(n) for n in wrong)} does not apply to --arch {cfg.arch}"
                          + (f": only to --arch {' and '.join(users)}" if users else ""))


def small_data(manifest):
    """Whether a dataset (its manifest) takes the small-data defaults: the built-in faces, or up to SMALL_DATA images."""
    return bool(manifest.get("embedded")) or manifest["count"] <= SMALL_DATA


def resolve_defaults(cfg, manifest, world):
    """`cfg` with its None settings filled for this dataset, architecture and number of processes."""
    arch = network.architecture(cfg.arch)
    small = small_data(manifest)
    table = SMALL_DEFAULTS if small else TUTORIAL_DEFAULTS
    filled = {k: v for k, v in table.items() if getattr(cfg, k) is None and applies(k, arch)}
    if filled.get("epoch_images", 0) is None:
        filled["epoch_images"] = manifest["count"]
    method = METHODS[arch.method]
    more = {**method.defaults(replace(cfg, **filled), small), **arch.defaults,   # the architecture's own win,
            **(arch.builtin if small else {})}                                   # its measured small-data recipe most
    filled.update({k: v for k, v in more.items() if getattr(cfg, k) is None})
    if small and "batch_size" in filled:   # a default batch of a folder of fewer photos: all of them
        filled["batch_size"] = min(filled["batch_size"], manifest["count"])
    if small and world > 1:
        filled = method.share_batches(filled, world)
    return replace(cfg, **filled)


def help_text(f):
    """An option's --help line: its text and its default, the method's or the dataset's where it is None."""
    def shown(v):
        if v is None or isinstance(v, bool):
            return "the dataset once" if v is None else "on" if v else "off"
        return f"{v:g}" if isinstance(v, float) else str(v)

    parts = [] if f.default is None else [shown(f.default)]
    if f.name in TUTORIAL_DEFAULTS:
        parts.append(f"{shown(TUTORIAL_DEFAULTS[f.name])}; {shown(SMALL_DEFAULTS[f.name])} on small data")
    by_text = {}
    for name, arch in network.ARCHITECTURES.items():
        text = None
        if applies(f.name, arch) and f.default is None:
            own = arch.defaults.get(f.name)
            text = METHODS[arch.method].default_help(f.name) if own is None else f"{own:g}"
        if text is not None:
            by_text.setdefault(text, []).append(name)
    users = [name for name, arch in network.ARCHITECTURES.items() if applies(f.name, arch)]
    if len(by_text) == 1 and next(iter(by_text.values())) == users:  # one default wherever the setting applies
        parts.append(next(iter(by_text)))
    else:
        parts += [f"{text} for {', '.join(names)}" for text, names in by_text.items()]
    parts += [f"{shown(arch.builtin[f.name])} for {name} on small data"
              for name, arch in network.ARCHITECTURES.items() if f.name in arch.builtin]
    scope = "" if len(users) == len(network.ARCHITECTURES) else f"{', '.join(users)}: "
    return scope + f.metadata["help"] + (f" (default: {'; '.join(parts)})" if parts else "")


# ----------------------------------------------------------------------------- resuming

def open_resume(cfg):
    """(path, checkpoint dict) that this run continues from, or (None, None) for a new run."""
    path = {"auto": os.path.join(cfg.out, checkpoint.FILE), "never": None}.get(cfg.resume, cfg.resume)
    if path is None or (cfg.resume == "auto" and not os.path.exists(path)):
        return None, None
    return path, checkpoint.load(path)


def init_config(cfg, explicit):
    """(`cfg` for a new run from the networks of checkpoint --init-from, that checkpoint): its architecture and
    network arguments. ConfigError where one given on the command line (in `explicit`; None: those that are not
    their defaults) conflicts with them."""
    path = cfg.init_from
    source = checkpoint.load(path)
    arch, args = source["arch"], source["arch_args"]
    if arch not in network.ARCHITECTURES:
        raise ConfigError(f"--init-from {path} holds a {arch!r} network, which this version cannot build")
    for name, value in {"arch": arch, **args}.items():
        given = getattr(cfg, name)
        said = name in explicit if explicit is not None else given not in (None, FIELDS[name].default)
        if said and given != value:
            raise ConfigError(f"--init-from {path} holds a {arch} network with {flag(name)} {value}, not {given}: "
                              f"leave {flag(name)} out (a fine-tuned run keeps the network it starts from)")
    return replace(cfg, arch=arch, **args), source


def resume_config(cfg, state, explicit, path):
    """`cfg` continuing the run of checkpoint `state`: its trajectory settings, this run's others.

    A setting given on the command line (in `explicit`; None means all) that differs from the
    checkpoint's raises ConfigError: the run could not continue the same way.
    """
    # settings newer than the checkpoint: what runs did before them, else their defaults
    old = {**asdict(TrainConfig()), **SINCE, **state["config"]}
    shaping = [name for name, f in FIELDS.items() if f.metadata["trajectory"]]
    for name in shaping:
        given = getattr(cfg, name)
        if (explicit is None or name in explicit) and given is not None and given != old[name]:
            raise ConfigError(f"{path} was trained with {flag(name)} {old[name]}, not {given}: resume with the same "
                              f"setting, or start a new run with --out elsewhere (or --resume never)")
    if old["arch"] not in network.ARCHITECTURES:
        raise ConfigError(f"{path} holds a {old['arch']!r} network, which this version cannot build: "
                          "use another --out, or --resume never to start over here")
    arch = network.architecture(old["arch"])   # older checkpoints stored settings that do not apply: not kept
    return replace(cfg, **{name: old[name] if applies(name, arch) else FIELDS[name].default for name in shaping})


@dataclass
class Position:
    """Where a run is: its loop counters, saved in every checkpoint."""
    epoch: int = 1          # the epoch being trained, from 1
    batch: int = 0          # batches done in this epoch
    iteration: int = 0      # iterations done in all
    images_seen: int = 0    # images shown, by all processes together
    epoch_shown: int = 0    # images shown before this epoch


def epoch_length(loader, pos):
    """Batches in the epoch of `pos` (with progressive batch sizes it depends on the images shown before it)."""
    loader.batch_sampler.set_epoch(pos.epoch - 1, shown=pos.epoch_shown)
    return len(loader.batch_sampler)


# ----------------------------------------------------------------------------- the run

class Run:
    """One training run's loop and its outputs: log, samples, evaluation, checkpoints."""

    def __init__(self, cfg, dataset, method, loader, procs, pos, fixed_z, resumed_from, order):
        self.cfg, self.dataset, self.method, self.loader, self.procs = cfg, dataset, method, loader, procs
        self.pos, self.fixed_z, self.order = pos, fixed_z, order
        self.path = os.path.join(cfg.out, checkpoint.FILE)
        self.samples = os.path.join(cfg.out, "samples")
        self.saved_at = pos.iteration if resumed_from else None   # iteration of the last checkpoint written
        self.log = RunLog(os.path.join(cfg.out, "log.jsonl"))
        self.interval = Interval()
        if procs.main:  # rank 0 writes; a resumed run keeps the log up to its checkpoint
            os.makedirs(self.samples, exist_ok=True)
            checkpoint.remove_stale_temporaries(cfg.out)
            self.log.restart(pos.iteration if resumed_from else None)
        if cfg.eval_every:  # a fixed real sample and fixed noise, so SWD values compare across iterations
            n = min(EVAL_COUNT, len(dataset) // 2)
            self.eval_real = dataset.get_uint8(np.sort(np.random.default_rng(cfg.seed).permutation(len(dataset))[:n]))
            self.eval_z = np.random.default_rng([cfg.seed, 1]).standard_normal((n, cfg.z_dim)).astype(np.float32)

    def loop(self):
        """Train to the last epoch, or until a signal; returns the checkpoint's path."""
        with StopRequest() as stop, self.procs.no_sync():
            for epoch in range(self.pos.epoch, self.cfg.epochs + 1):
                self.pos.epoch = epoch
                if self.run_epoch(stop):
                    return self.path
                self.end_epoch()
        if self.procs.main:
            print(f"done: checkpoint {self.path}, samples in {self.samples}; "
                  f"next: python generator.py --checkpoint {self.path}")
        return self.path

    def run_epoch(self, stop):
        """The rest of the current epoch; True when a signal stopped it (after saving)."""
        cfg, pos, procs = self.cfg, self.pos, self.procs
        per_epoch = epoch_length(self.loader, pos)
        self.loader.batch_sampler.set_epoch(pos.epoch - 1, start=pos.batch, order=self.order, shown=pos.epoch_shown)
        self.order = None  # a checkpoint's order is for the epoch it stopped in
        bar = progress(self.loader, desc=f"epoch {pos.epoch}/{cfg.epochs}", unit="it", initial=pos.batch,
                       total=per_epoch, disable=not procs.main)
        for real in bar:
            stats, checks = self.method.step(real, pos)
            problem = divergence(stats, checks, self.method.order)
            stopping, diverged = procs.any(stop.signal, problem)
            if diverged:
                self.diverged(problem)
            pos.iteration += 1
            pos.batch += 1
            pos.images_seen += real.shape[0] * procs.world
            self.interval.add(stats, real.shape[0] * procs.world)
            if procs.main and pos.iteration % cfg.log_every == 0:
                record = self.write_record(stats)
                bar.set_postfix(iter=pos.iteration, **{k: f"{record[k]:.3f}" for k in self.method.headline[:2]},
                                img_s=f"{record['img_per_s']:.0f}")
            if procs.main and pos.iteration % cfg.sample_every == 0:
                self.save_samples()
            if procs.main and cfg.eval_every and pos.iteration % cfg.eval_every == 0:
                self.measure()
            if stopping:
                self.save()
                if procs.main:
                    print(f"{stop.signal or 'stop'} at iteration {pos.iteration} (epoch {pos.epoch}, batch "
                          f"{pos.batch}/{per_epoch}): saved; resume with the same command (it continues from "
                          f"{self.path})", file=sys.stderr)
                return True
            if cfg.save_every and pos.iteration % cfg.save_every == 0 and pos.batch < per_epoch:
                self.save()
        return False

    def diverged(self, problem):
        last = (f"{self.path} (iteration {self.saved_at})" if self.saved_at is not None
                else "no checkpoint (none was saved yet)")
        raise Diverged(f"training stopped at iteration {self.pos.iteration + 1}, epoch {self.pos.epoch}: "
                       f"{problem or 'another process diverged'}. Kept: {last}. "
                       "Try a lower --lr, or resume from the checkpoint")

    def write_record(self, stats):
        pos = self.pos
        record = {"epoch": pos.epoch, "iteration": pos.iteration, "images": pos.images_seen, **self.interval.means(),
                  **self.method.log_fields(stats), "img_per_s": self.interval.rate()}
        self.log.append(record)
        self.interval.reset()
        return record

    def end_epoch(self):
        """Samples, plots and a checkpoint at the end of an epoch, and its line on stderr."""
        cfg, pos = self.cfg, self.pos
        if self.procs.main and pos.iteration % cfg.sample_every:
            self.save_samples()
        if self.procs.main and self.log.losses:
            self.method.plots(self.log.losses, cfg.out)
        self.save()
        pos.batch, pos.epoch_shown = 0, pos.images_seen
        if self.procs.main:
            last = self.log.losses[-1] if self.log.losses else None
            numbers = ("".join(f"{k} {last[k]:.3f}, " for k in self.method.headline)
                       + f"{last['img_per_s']:.0f} img/s{self.method.summary(last)}"
                       if last else f"no log record yet (one every {cfg.log_every} iterations)")
            print(f"epoch {pos.epoch}/{cfg.epochs}: iteration {pos.iteration}, {numbers}", file=sys.stderr)

    def faces(self, z):
        """uint8 faces of the sampling network at its current stage, shown at the dataset's size."""
        self.method.sync()
        return enlarge(network.sample(self.method.nets[self.method.sampler], z), self.dataset.size)

    def save_samples(self):
        """The fixed noise's faces as a grid, at the sampling network's current stage (named in the file)."""
        self.method.sync()
        images = network.sample(self.method.nets[self.method.sampler], self.fixed_z)
        staged = f"_{images.shape[1]}px" if self.method.stage(self.pos) is not None else ""
        name = os.path.join(self.samples, f"epoch_{self.pos.epoch:04d}_iter_{self.pos.iteration:06d}{staged}.png")
        write_png(name, make_grid(images), scale=grid_scale(images.shape[1]))
        write_movie(self.samples, os.path.join(self.cfg.out, "progress.gif"))

    def measure(self):
        per_size, mean = swd(self.faces(self.eval_z), self.eval_real, seed=self.cfg.seed)
        self.log.append({"epoch": self.pos.epoch, "iteration": self.pos.iteration, "images": self.pos.images_seen,
                         "swd_x1e3": round(mean, 3),
                         "swd_x1e3_per_size": {s: round(v, 3) for s, v in per_size.items()}})
        plot_curves(self.log.evaluations, {"swd_x1e3": "SWD x 1e3 (mean over sizes)"}, "SWD x 1e3, lower is better",
                    os.path.join(self.cfg.out, "swd.png"))

    def save(self):
        """The whole training state, atomically, to checkpoint.pdparams (and a numbered snapshot with --keep)."""
        method, pos, cfg = self.method, self.pos, self.cfg
        method.sync()
        self.procs.share_state(*(method.nets[name] for name in method.order))
        self.saved_at = pos.iteration
        if not self.procs.main:
            return
        state = {"format": checkpoint.FORMAT, "version": checkpoint.__version__, "arch": cfg.arch,
                 "arch_args": method.args, **method.parts(), "rng": checkpoint.rng_state(), **asdict(pos),
                 "order": self.loader.batch_sampler.epoch_order(), "method": method.state(pos),
                 "sampler": {"net": method.sampler, "role": "G", "stage": method.stage(pos)},
                 "fixed_z": self.fixed_z, "config": asdict(cfg),
                 "dataset": checkpoint.fingerprint(self.dataset.manifest)}
        checkpoint.save(self.path, state)
        if cfg.keep:
            checkpoint.save(os.path.join(cfg.out, checkpoint.snapshot_name(pos.iteration)), state)
            checkpoint.prune_snapshots(cfg.out, cfg.keep)


# ----------------------------------------------------------------------------- train

def train(cfg, explicit=None):
    """Run (or continue) the training that `cfg` describes; returns the path of the last checkpoint.

    `explicit` names the settings the user gave (None: all of them); on resume the others
    come from the checkpoint. Raises ConfigError, DatasetError, CheckpointError for bad input
    (before anything is written) and Diverged when the losses or weights stop being finite.
    """
    # --- settings: the checkpoint's when resuming, then those that apply, then the defaults
    procs = Processes()
    resumed_from, state = open_resume(cfg)
    source = None   # with --init-from, the checkpoint whose networks a new run starts from
    if state is not None:
        cfg = resume_config(cfg, state, explicit, resumed_from)
    elif cfg.init_from:
        cfg, source = init_config(cfg, explicit)
    dataset = FaceDataset(cfg.data, size=cfg.size)
    if source is not None and dataset.size != cfg.size:
        raise ConfigError(f"--init-from {cfg.init_from} holds {cfg.size}x{cfg.size} networks and {cfg.data} has "
                          f"{dataset.size}x{dataset.size} images: make the data at {cfg.size} "
                          f"(pretreat.py --size {cfg.size})")
    check_settings(cfg, explicit)
    cfg = replace(resolve_defaults(cfg, dataset.manifest, procs.world), size=dataset.size)
    device = runtime.select_device(cfg.device)
    arch = network.architecture(cfg.arch)
    problem = arch.size_problem(dataset.size)
    if problem:
        raise ConfigError(f"--arch {cfg.arch} cannot train on the {dataset.size}x{dataset.size} images of {cfg.data}: "
                          f"{problem}; make a dataset it fits (pretreat.py --size) or read this one at another --size")

    # --- the method (networks, optimizers) and the data it is fed
    paddle.seed(cfg.seed)
    method = METHODS[arch.method](cfg, cfg.arch, dataset.size, procs)
    batch, batch_at, batch_flag = method.batching(dataset.size)
    if batch * procs.world > len(dataset):
        raise ConfigError(f"{batch_flag} {batch}{f' x {procs.world} processes' if procs.world > 1 else ''} "
                          f"is more than the {len(dataset)} images of {cfg.data}: lower it")
    loader = make_loader(dataset, batch, flip=cfg.flip, epoch_images=cfg.epoch_images, seed=cfg.seed,
                         num_workers=cfg.num_workers, rank=procs.rank, replicas=procs.world, batch_size_at=batch_at)
    if epoch_length(loader, Position()) == 0:
        raise ConfigError(f"an epoch of {cfg.epoch_images} images holds no batch of {batch * procs.world}: "
                          "lower the batch size or raise --epoch-images")

    # --- where to start: the beginning, or the checkpoint's position, weights and random streams
    pos, order = Position(), None
    fixed_z = np.random.default_rng(cfg.seed).standard_normal((SAMPLE_COUNT, cfg.z_dim)).astype(np.float32)
    if state is not None:
        checkpoint.check_compatible(state, cfg.arch, method.args, dataset.manifest, resumed_from)
        method.load(state)
        pos, fixed_z = Position(**{k: state[k] for k in asdict(pos)}), state["fixed_z"]
        if pos.batch == epoch_length(loader, pos):
            pos.epoch, pos.batch, pos.epoch_shown = pos.epoch + 1, 0, pos.images_seen
    # Processes on several machines see their own files: they must start at one place on alike datasets.
    start_differs, *data_differs = procs.differ(pos.iteration, len(dataset), dataset.size)
    if start_differs:
        raise ConfigError(f"the processes start at different iterations (this one at {pos.iteration}): every "
                          f"machine must find the same checkpoint in --out {cfg.out}; share that folder, or copy "
                          "it from the machine of rank 0")
    if any(data_differs):
        raise ConfigError(f"the processes read different datasets (this one {len(dataset)} images of "
                          f"{dataset.size}x{dataset.size}): give every machine the same --data")
    if state is not None:
        if pos.epoch > cfg.epochs:
            print(f"{resumed_from} has finished {pos.epoch - 1} epochs (iteration {pos.iteration}); "
                  f"ask for more with --epochs N", file=sys.stderr)
            return resumed_from
        order = state["order"] if pos.batch else None  # the stopped epoch's order, to finish it
    if source is not None:
        method.initialise(source)
    method.start(pos, device)
    if state is not None:  # last: building networks and the static program draws random numbers
        checkpoint.set_rng_state(state["rng"])
    run = Run(cfg, dataset, method, loader, procs, pos, fixed_z, resumed_from, order)
    if procs.main:
        announce(cfg, dataset, method, device, procs, pos, resumed_from)
    return run.loop()


def announce(cfg, dataset, method, device, procs, pos, resumed_from):
    """The run's first line on stderr: what trains on what, where, and how big."""
    what = f"resuming {resumed_from} at epoch {pos.epoch}, iteration {pos.iteration}" if resumed_from else \
        f"fine-tuning the networks of {cfg.init_from}" if cfg.init_from else "training"
    sizes = ", ".join(f"{name} {network.count_parameters(method.nets[name]):,}" for name in sorted(method.order))
    print(f"{what}: {cfg.arch} {dataset.size}x{dataset.size} on {len(dataset)} images from "
          f"{dataset.manifest['source']} ({device}, {method.path} step"
          f"{f', {procs.world} processes' if procs.world > 1 else ''}); {method.describe()}; {sizes} parameters",
          file=sys.stderr)


# ----------------------------------------------------------------------------- CLI

def parse_args(argv=None):
    """(TrainConfig, parser, the settings given) from the command line; bad values are refused with one line."""
    parser = build_parser(TrainConfig, __doc__, help_text,
                          allow_abbrev=False)  # exact flags: a resumed run must know which were given
    cfg = parse(TrainConfig, parser, argv)
    problem = cfg.size and network.architecture(cfg.arch).size_problem(cfg.size)
    if problem:
        parser.error(f"--size {cfg.size} does not fit --arch {cfg.arch}: {problem}")
    given = sys.argv[1:] if argv is None else [str(a) for a in argv]
    explicit = {a.dest for a in parser._actions for opt in a.option_strings
                for g in given if g == opt or g.startswith(opt + "=")}
    return cfg, parser, explicit


def unwritable(folder):
    """Why `folder` cannot be written to (without creating it), or None when it can."""
    path = os.path.abspath(folder)
    if os.path.exists(path) and not os.path.isdir(path):
        return "it is a file, not a folder"
    while not os.path.exists(path):
        path = os.path.dirname(path)
    if not os.path.isdir(path):
        return f"{path} is a file, not a folder"
    if not os.access(path, os.W_OK | os.X_OK):
        return f"no permission to write in {path}"
    return None


def main(argv=None):
    cfg, parser, explicit = parse_args(argv)
    try:
        with refusing(parser, DatasetError, ConfigError, checkpoint.CheckpointError):
            train(cfg, explicit=explicit)
    except Diverged as e:  # not the user's mistake: exit 1, with what was kept
        parser.exit(1, f"{parser.prog}: {e}\n")


if __name__ == "__main__":
    main()
