"""Training methods: one object per recipe, which train.py's loop drives without knowing the architecture.

A method owns its networks and optimizers (dicts by name, which checkpoints save and load by
key), names the network that samples and evaluation draw with, and owns its step, its state
for the checkpoint, its log fields and its plots. train.py calls, in this order:

    method = Method(cfg, arch, size, processes)   # networks (from network.py's registry), optimizers
    batch, batch_at, flag = method.batching(size) # how the loader batches the data
    method.load(checkpoint_state)                 # when resuming
    method.start(position, device)                # the step's own set-up
    stats, checks = method.step(real, position)   # one iteration: numbers for the log, weight sums
    method.sync()                                 # before anything reads the networks
    method.parts(), method.state(position), method.stage(position)   # for the checkpoint
    method.log_fields(stats), method.summary(record), method.plots(history, folder)

Here: the base class, the two helpers every step uses (`frozen`, `update`), and BCEMethod,
the tutorial's DCGAN recipe with the Torch blog's balancing and label tricks. progressive.py
holds PG-GAN's ProgressiveMethod.

Example:
    tricks = Tricks()                                        # the plain GAN
    stats = bce_iteration(G, D, opt_G, opt_D, real, 100, 1, 2, tricks)
"""
import contextlib
import functools
import os
import sys

import runtime  # before Paddle: thread and MKL settings
import numpy as np
import paddle
import paddle.nn.functional as F

import checkpoint
import network
from augment import AdaController, Augment
from balance import MARGINS, LeCam, Tricks, make_optimizer
from control import weight_checks
from logs import plot_curves, plot_monitor
from runtime import ConfigError

EMA_BETA = 0.999   # G's moving average (PG-GAN's, and --ema's)


# ----------------------------------------------------------------------------- helpers

@contextlib.contextmanager
def frozen(net):
    """`net`'s trained parameters held constant within the block: another network's update through
    it computes no weight gradients for it. BatchNorm's running statistics are left as they are."""
    params = [p for p in net.parameters() if not p.stop_gradient]
    for p in params:
        p.stop_gradient = True
    try:
        yield
    finally:
        for p in params:
            p.stop_gradient = False


def update(opt, loss, reduce=None, step=None):
    """Backward `loss`, average the gradients over processes (`reduce`), then `step(opt)` (default: opt.step()).

    `opt` may also be a list of optimizers that the one loss updates together.
    """
    opts = opt if isinstance(opt, list) else [opt]
    for o in opts:
        o.clear_grad()
    loss.backward()
    for o in opts:
        if reduce:
            reduce(o)
        if step:
            step(o)
        else:
            o.step()


def ema_beta(updates, beta=EMA_BETA):
    """The moving average's beta after `updates` updates: 0.999, warming up as TensorFlow's
    ExponentialMovingAverage does, min(beta, (1 + t) / (10 + t)), so that a short run's average
    is not mostly its random initial weights (0.999 ** 800 = 0.45)."""
    return min(beta, (1 + updates) / (10 + updates))


def ema_update(G_ema, G, beta=EMA_BETA):
    """G_ema <- beta G_ema + (1 - beta) G for the trained parameters; BatchNorm's statistics copied, as
    stylegan2-ada-pytorch copies buffers."""
    with paddle.no_grad():
        for e, p in zip(G_ema.parameters(), G.parameters()):
            e.set_value(p if p.stop_gradient else e * beta + p * (1.0 - beta))


def static_step_problem(version=None):
    """Why this Paddle cannot run the static CPU step (None when it can): a release other than runtime.TESTED_PADDLE
    (the step builds on Paddle's private legacy-program API, which other releases may have moved), or faststep.py
    not importing. faststep is imported here first, and only when a static step is wanted."""
    untested = runtime.untested_paddle(version or paddle.__version__)
    if untested:
        return untested
    try:
        static_steps()
    except (ImportError, AttributeError) as e:
        return f"faststep.py does not import with this Paddle ({type(e).__name__}: {e})"
    return None


def static_steps():
    """faststep, the module of the static CPU steps and of the Paddle legacy-program internals they build on: imported
    only when a static step is built, so that the eager step never depends on those internals."""
    import faststep
    return faststep


def choose_step(name, device, arch, processes):
    """The training step ('static' or 'dygraph') that --step `name` means on `device` for `arch`.

    Where auto would take the static step and this Paddle cannot run it, it says so in one line and takes the eager
    step; --step static is refused there."""
    static = network.architecture(arch).static_step
    if name == "auto":
        if not (device == "cpu" and static and processes == 1):
            return "dygraph"
        problem = static_step_problem()
        if problem:
            print(f"training on Paddle's eager step: the static CPU step is off because {problem}", file=sys.stderr)
        return "dygraph" if problem else "static"
    if name == "static" and processes > 1:
        raise ConfigError("--step static runs in one process; several processes train with --step dygraph (or auto)")
    if name == "static" and device != "cpu":
        raise ConfigError("--step static runs on the CPU only; on a GPU use --step dygraph (or auto)")
    if name == "static" and not static:
        raise ConfigError(f"--step static has no program for --arch {arch}; use --step dygraph (or auto)")
    problem = name == "static" and static_step_problem()
    if problem:
        raise ConfigError(f"--step static cannot run: {problem}; use --step dygraph (or auto)")
    return name


# ----------------------------------------------------------------------------- the interface

class Method:
    """A training recipe; subclasses give the step. See the module docstring for the calls."""
    sampler = "G"            # the network that samples and evaluation draw with
    order = ("D", "G")       # the networks in the order an iteration updates them
    loss_label = "loss"      # loss.png's y axis
    headline = ("loss_D", "loss_G", "D_real", "D_fake")   # the log's numbers on the bar and the epoch's line
    DEFAULTS = {}            # values of the config's None settings that this method decides

    def __init__(self, cfg, arch, size, procs):
        self.cfg, self.arch, self.procs = cfg, arch, procs
        self.args = {name: size if name == "size" else getattr(cfg, name)
                     for name in network.architecture(arch).args}
        self.nets = network.build(arch, **self.args)
        self.opts = {}
        self.path = "dygraph"
        # the static CPU step (faststep.py), which holds the weights while it trains, and whether self.nets and
        # self.opts lag behind it
        self.fast, self.stale = None, False
        # what D sees (--augment), ADA's p, LeCam's averages: the same for every method with a D
        self.T = Augment(getattr(cfg, "augment", None) or "none")
        self.ada = AdaController(self.T)
        self.lecam = LeCam(cfg.lecam) if getattr(cfg, "lecam", None) else None

    @property
    def reduce(self):
        """The update helpers' gradient averaging over several processes, `reduce(opt)`: each optimizer updates the
        network of its name. None with one process."""
        if self.procs.world == 1:
            return None
        parameters = {id(opt): self.nets[name].parameters() for name, opt in self.opts.items()}
        return lambda opt: self.procs.average_gradients(parameters[id(opt)])

    def average_G(self):
        """Add G's exponential moving average, "G_ema", which samples, evaluation and generator.py then draw with."""
        G_ema = network.build_net(self.arch, "G", self.args)
        G_ema.set_state_dict(self.nets["G"].state_dict())
        self.nets["G_ema"] = G_ema
        self.sampler = "G_ema"

    def regularised(self, stats, batch):
        """After an iteration: ADA's p follows D's outputs on reals (their mean over processes, so that every
        process draws with the same p); returns `stats` without the number it took."""
        sign_real = stats.pop("sign_real", None)
        if sign_real is not None and self.T.kind == "ada":
            self.ada.observe(self.procs.mean([sign_real])[0], batch * self.procs.world)
        return stats

    def regularity_state(self):
        """ADA's and LeCam's state, for the checkpoint."""
        return {"ada": self.ada.state(), "lecam": self.lecam.state() if self.lecam else None}

    def load_regularity(self, state):
        if state.get("ada"):
            self.ada.load(state["ada"])
        if self.lecam and state.get("lecam"):
            self.lecam.load(state["lecam"])

    def regularity_fields(self):
        """ADA's p for the log, when it adapts."""
        return {"augment_p": round(self.T.p, 6)} if self.T.kind == "ada" else {}

    def plot_regularity(self, history, folder):
        """augment.png: ADA's p over the run."""
        if self.T.kind == "ada" and history and "augment_p" in history[-1]:
            plot_curves([r for r in history if "augment_p" in r], {"augment_p": "ADA's p"},
                        "augmentation probability", os.path.join(folder, "augment.png"))

    @classmethod
    def defaults(cls, cfg, embedded):
        """{setting: value} for this method's settings, given the rest of `cfg` and the kind of dataset."""
        return dict(cls.DEFAULTS)

    @classmethod
    def default_help(cls, name):
        """How --help states this method's default for setting `name`, or None when it decides none."""
        value = cls.DEFAULTS.get(name)
        if isinstance(value, bool):
            return "on" if value else "off"
        return None if value is None else f"{value:g}" if isinstance(value, float) else str(value)

    @classmethod
    def share_batches(cls, values, world):
        """`values` (defaults meant as global batches) as per-process batches for `world` processes."""
        if "batch_size" in values:
            values = {**values, "batch_size": max(1, values["batch_size"] // world)}
        return values

    def batching(self, size):
        """(per-process batch size, function images shown -> batch size or None, the flag that sets it)."""
        return self.cfg.batch_size, None, "--batch-size"

    def load(self, state):
        """Take the networks, optimizer state and method state of a checkpoint."""
        for name, net in self.nets.items():
            net.set_state_dict(state[name])
        for name, opt in self.opts.items():
            checkpoint.set_optimizer_state(opt, self.nets[name], state["opt_" + name])
        self.load_state(state["method"])

    def parts(self):
        """{name: state} of every network and optimizer, for the checkpoint."""
        return {**{name: net.state_dict() for name, net in self.nets.items()},
                **{"opt_" + name: checkpoint.optimizer_state(opt, self.nets[name]) for name, opt in self.opts.items()}}

    def start(self, pos, device):
        """Set up the step for a run at position `pos` (after any checkpoint was loaded)."""

    def own_noise(self, pos):
        """With several processes, give each its own noise for the iteration at `pos`: Paddle's generator seeded
        from (seed, rank, iteration), so a resumed run draws the same."""
        if self.procs.world > 1:
            entropy = [self.cfg.seed, self.procs.rank, pos.iteration]
            paddle.seed(int(np.random.SeedSequence(entropy).generate_state(1)[0]))

    def step(self, real, pos):
        """One iteration on the batch `real`: ({name: number} for the log, weight_checks of the trained networks)."""
        raise NotImplementedError

    def sync(self):
        """Bring self.nets and self.opts up to date, where the static step keeps its own copy of them."""
        if self.stale:
            self.fast.store(self.nets, self.opts)
            self.stale = False

    def state(self, pos):
        """The method's own state for the checkpoint (JSON-like)."""
        return {}

    def load_state(self, state):
        """Continue from the state that `state()` returned."""

    def stage(self, pos):
        """set_stage(**stage) arguments of the sampling network at `pos`, or None for a network without stages."""
        return None

    def log_fields(self, stats):
        """Numbers for the log record beside the means of the step's own."""
        return {}

    def summary(self, record):
        """Text added to the end-of-epoch line."""
        return ""

    def describe(self):
        """The settings that the start-of-run line shows."""
        return ", ".join([f"{k.replace('_', '-')} {v}" for k, v in self.args.items() if k != "size"]
                         + self.regularity_words())

    def regularity_words(self):
        """The start-of-run line's words for --augment, --lecam and G's moving average."""
        return ([f"augment {self.T.kind}"] if self.T.active else []) + (
            [f"lecam {self.lecam.weight:g}"] if self.lecam else []) + (
            ["sampling G's moving average"] if self.sampler == "G_ema" else [])

    def plots(self, history, folder):
        """Write the method's PNGs of the loss records in `history` into `folder`."""
        plot_curves(history, {"loss_D": "D", "loss_G": "G"}, self.loss_label, os.path.join(folder, "loss.png"))


# ----------------------------------------------------------------------------- BCE: DCGAN and the Torch blog

def _bce(logits, target):
    return F.binary_cross_entropy_with_logits(logits, target)


def same(x):
    return x


def d_step(D, opt_D, real, fake, tricks, reduce=None, agree=None, T=same, lecam=None):
    """One D forward on a real batch and a fake one (not differentiated into G), and D's update.

    Returns the numbers: loss_D, D_real, D_fake (mean probabilities), err_R = BCE(D(real), 1),
    err_F = BCE(D(fake), 0) and update_G, the balancing rule's word on G's update (the tricks
    decide whether D and G update; Tricks() always updates both). `reduce(opt)`, when given,
    averages the gradients of opt's parameters over processes, and `agree(values)` the errors
    that the rule decides on, so that every process makes the same decision. D sees T(real) and
    T(fake) (augment.Augment; one draw each); `lecam` (balance.LeCam) adds its term to D's loss.
    """
    # Real and fake go through D separately, so its BatchNorm sees all-real and all-fake batches.
    logits_real, logits_fake = D(T(real)), D(T(fake.detach()))
    err_real = _bce(logits_real, paddle.ones_like(logits_real))
    err_fake = _bce(logits_fake, paddle.zeros_like(logits_fake))
    update_d, update_g = tricks.decide(*agreed([float(err_real), float(err_fake)], tricks, agree))
    if tricks.plain_labels:
        loss_D = err_real + err_fake
    else:
        t_real, t_fake = tricks.targets(logits_real, logits_fake)
        loss_D = _bce(logits_real, t_real) + _bce(logits_fake, t_fake)
    reg = lecam(logits_real, logits_fake) if lecam else None
    if update_d:
        extra = [t for t in (tricks.penalty(D), reg) if t is not None]
        update(opt_D, sum(extra, loss_D), reduce, functools.partial(tricks.step, net="D"))
    stats = {"loss_D": float(loss_D), "D_real": float(F.sigmoid(logits_real).mean()),
             "D_fake": float(F.sigmoid(logits_fake).mean()), "err_R": float(err_real), "err_F": float(err_fake),
             "update_G": update_g, "sign_real": float(paddle.sign(logits_real).mean())}
    if reg is not None:
        stats["lecam"] = float(reg)
    if not update_g:  # G's loss all the same, from this forward: the L2 rule and the log need it
        stats["loss_G"] = float(_bce(logits_fake, paddle.ones_like(logits_fake)))
    return stats


def agreed(errors, tricks, agree):
    """The D errors the balancing rule decides on: this process's, or with several processes their means."""
    return agree(errors) if agree and tricks.skipping else errors


def g_step(D, opt_G, fake, tricks, reduce=None, T=same):
    """One G update from fakes still attached to G's graph: non-saturating BCE(D(T(fake)), 1)."""
    with frozen(D):  # D's weight gradients would be thrown away: do not compute them
        logits = D(T(fake))
        loss_G = _bce(logits, paddle.ones_like(logits))
        update(opt_G, loss_G, reduce, functools.partial(tricks.step, net="G"))
    return float(loss_G)


def bce_iteration(G, D, opt_G, opt_D, real, z_dim, d_steps, g_steps, tricks, reduce=None, agree=None, T=same,
                  lecam=None):
    """d_steps D updates, then g_steps G updates; returns loss_D, D_real, D_fake, err_R, err_F, loss_G
    and sign_real, the mean sign of D's outputs on reals (plus lecam, its term, with `lecam`).

    The first G update reuses the fakes of the first D update, graph and all, as the
    PyTorch DCGAN does: the same maths as a second G forward on the same noise, one forward
    fewer. Further D updates draw fresh fakes without a graph; further G updates fresh noise.
    The balancing rule of `tricks` (balance.Tricks) may skip D's or G's updates; when G's are
    skipped, loss_G is BCE(D(fake), 1) of the D step's forward. D sees T of every image (augment.py).
    """
    n = real.shape[0]
    fake = G(paddle.randn([n, z_dim]))
    first = stats = d_step(D, opt_D, real, fake, tricks, reduce, agree, T, lecam)
    for _ in range(d_steps - 1):
        with paddle.no_grad():
            more = G(paddle.randn([n, z_dim]))
        stats = d_step(D, opt_D, real, more, tricks, reduce, agree, T, lecam)
    if first["update_G"]:
        losses = [g_step(D, opt_G, fake, tricks, reduce, T)] + [
            g_step(D, opt_G, G(paddle.randn([n, z_dim])), tricks, reduce, T) for _ in range(g_steps - 1)]
        loss_g = float(np.mean(losses))
    else:
        loss_g = first["loss_G"]
    tricks.after(loss_g)
    return {**{k: v for k, v in stats.items() if k not in ("update_G", "loss_G")}, "loss_G": loss_g}


class BCEMethod(Method):
    """The tutorial's GAN (and the Torch blog's): BCE on logits, --d-steps D updates then --g-steps G updates.

    With balance.Tricks for the blog's skip rule and adaptive L2, label tricks and RMSProp.
    On the CPU, where the architecture has one, the iteration runs as faststep.py's static program (tricks
    and all), which holds the weights while it trains.
    """
    loss_label = "BCE loss"
    DEFAULTS = dict(z_dim=100, beta1=0.5, beta2=0.999, d_steps=1, g_steps=2, optimizer="adam", balance="none",
                    augment="none", lecam=0.0, ema=False)
    LR = {"adam": 2e-4, "rmsprop": 1e-3}   # Radford et al.; the blog's RMSProp

    @classmethod
    def defaults(cls, cfg, embedded):
        optimizer, balance = cfg.optimizer or cls.DEFAULTS["optimizer"], cfg.balance or cls.DEFAULTS["balance"]
        return {**cls.DEFAULTS, "lr": cls.LR[optimizer], "margin": MARGINS.get(balance, MARGINS["margin"])}

    @classmethod
    def default_help(cls, name):
        if name == "lr":
            return ", ".join(f"{lr:g} with {opt}" for opt, lr in cls.LR.items())
        if name == "margin":
            return ", ".join(f"{margin:g} with {rule}" for rule, margin in MARGINS.items())
        return super().default_help(name)

    def __init__(self, cfg, arch, size, procs):
        super().__init__(cfg, arch, size, procs)
        self.opts = {name: make_optimizer(cfg.optimizer, cfg.lr, cfg.beta1, cfg.beta2, self.nets[name].parameters())
                     for name in ("G", "D")}
        self.tricks = Tricks(balance=cfg.balance, margin=cfg.margin, optimizer=cfg.optimizer, lr=cfg.lr,
                             real_label=cfg.real_label, label_jitter=cfg.label_jitter, flip_labels=cfg.flip_labels)
        if cfg.ema:
            self.average_G()

    def load_state(self, state):
        self.tricks = self.tricks.continued(state)
        self.load_regularity(state)

    def start(self, pos, device):
        cfg, G, D = self.cfg, self.nets["G"], self.nets["D"]
        self.path = choose_step(cfg.step, device, self.arch, self.procs.world)
        if self.path == "static":
            self.fast = static_steps().FastStep(self.arch, self.args, cfg.batch_size, cfg.lr, cfg.beta1, cfg.beta2,
                                          cfg.d_steps, cfg.g_steps, self.T, self.lecam, self.tricks)
            self.fast.load(self.nets, self.opts)
        self.G_run, self.D_run = self.procs.wrap(G), self.procs.wrap(D)

    def step(self, real, pos):
        if self.fast is not None:
            stats = self.fast(real)
            self.stale = True
            checks = {"G": stats.pop("G_check"), "D": stats.pop("D_check")}
            if "G_ema" in self.nets:  # the average needs G's new weights every iteration
                self.fast.store_net("G", self.nets["G"])
        else:
            cfg, procs = self.cfg, self.procs
            self.own_noise(pos)
            stats = bce_iteration(self.G_run, self.D_run, self.opts["G"], self.opts["D"], real, cfg.z_dim,
                                  cfg.d_steps, cfg.g_steps, self.tricks, self.reduce, procs.mean, self.T, self.lecam)
            checks = weight_checks({"G": self.nets["G"], "D": self.nets["D"]})
        if "G_ema" in self.nets:
            ema_update(self.nets["G_ema"], self.nets["G"], ema_beta(pos.iteration))
        return self.regularised(stats, real.shape[0]), checks

    def state(self, pos):
        # options and counters (L2 coefficient, updates, skips), ADA's p and LeCam's averages
        return {**self.tricks.state(), **self.regularity_state()}

    def log_fields(self, stats):
        return {"d_skips": self.tricks.d_skips, "g_skips": self.tricks.g_skips, "coef_l2": self.tricks.coef_l2,
                **self.regularity_fields()}

    def describe(self):
        return f"batch {self.cfg.batch_size}, {super().describe()}"

    def plots(self, history, folder):
        super().plots(history, folder)
        plot_monitor(history, self.tricks.band(), os.path.join(folder, "monitor.png"))
        self.plot_regularity(history, folder)


# ----------------------------------------------------------------------------- VAE

def kl_divergence(mean, logvar):
    """KL(N(mean, exp(logvar)) || N(0, I)) per image, summed over z: -1/2 sum(1 + logvar - mean^2 - exp(logvar))."""
    return -0.5 * (1 + logvar - mean * mean - paddle.exp(logvar)).sum(axis=1)


def reconstruction_error(x, y):
    """Squared pixel error per image, halved: the negative log-likelihood of x under N(y, I), up to a constant."""
    return 0.5 * ((x - y) ** 2).reshape([x.shape[0], -1]).sum(axis=1)


def encode(E, real, noise):
    """(z, KL to N(0, I) as a batch mean) for `real`: E gives the mean and log-variance of z, and
    z = mean + exp(logvar / 2) eps with eps = noise(shape), the reparameterisation of the VAE and the VAE/GAN."""
    mean, logvar = E(real)
    z = mean + paddle.exp(0.5 * logvar) * noise(mean.shape)
    return z, kl_divergence(mean, logvar).mean()


def vae_losses(E, G, real, noise):
    """(loss, KL, reconstruction error), batch means, of the VAE on `real`: E gives the mean and log-variance
    of z, z = mean + exp(logvar / 2) eps with eps = noise(shape), G decodes z. The eager step's and the
    static program's (faststep.VAEStep), which passes a program input as the noise."""
    z, kl = encode(E, real, noise)
    rec = reconstruction_error(real, G(z)).mean()
    return kl + rec, kl, rec


def vae_stats(loss, kl, rec):
    """VAEMethod's numbers for the log from its losses (tensors or floats)."""
    return {"loss_E": float(loss), "loss_G": float(rec), "kl": float(kl), "reconstruction": float(rec)}


class VAEMethod(Method):
    """A variational autoencoder (the Torch blog's "going further", after y0ast's VAE-Torch): encoder E gives
    the mean and log-variance of z, the decoder G draws x from z = mean + exp(logvar / 2) eps; the loss per
    image is KL(q(z|x) || N(0, I)) + the pixel-wise reconstruction error, averaged over the batch, one Adam
    step of both networks per iteration. Faces come from z ~ N(0, I) through G. On the CPU the iteration
    runs as faststep.VAEStep's static program, built from the same vae_losses."""
    order = ("E", "G")
    loss_label = "per-image loss"
    headline = ("loss_E", "kl", "reconstruction")
    DEFAULTS = dict(z_dim=100, lr=1e-3, beta1=0.9, beta2=0.999)

    def __init__(self, cfg, arch, size, procs):
        super().__init__(cfg, arch, size, procs)
        self.opts = {name: make_optimizer("adam", cfg.lr, cfg.beta1, cfg.beta2, self.nets[name].parameters())
                     for name in ("E", "G")}

    def start(self, pos, device):
        self.path = choose_step(self.cfg.step, device, self.arch, self.procs.world)
        self.E_run, self.G_run = self.procs.wrap(self.nets["E"]), self.procs.wrap(self.nets["G"])
        if self.path == "static":
            cfg = self.cfg
            self.fast = static_steps().VAEStep(self.arch, self.args, cfg.batch_size, cfg.lr, cfg.beta1, cfg.beta2,
                                               vae_losses)
            self.fast.load(self.nets, self.opts)

    def step(self, real, pos):
        if self.fast is not None:
            out = self.fast(real)
            self.stale = True
            return vae_stats(out["loss"], out["kl"], out["reconstruction"]), {"E": out["E_check"], "G": out["G_check"]}
        loss, kl, rec = vae_losses(self.E_run, self.G_run, real, paddle.randn)
        update(list(self.opts.values()), loss, self.reduce)
        return vae_stats(loss, kl, rec), weight_checks(self.nets)

    def plots(self, history, folder):
        plot_curves(history, {"kl": "KL to N(0, I)", "reconstruction": "reconstruction error"}, self.loss_label,
                    os.path.join(folder, "loss.png"))


# ----------------------------------------------------------------------------- VAE/GAN

def scale_gradient(x, scale):
    """`x` unchanged going forward; its gradient multiplied by `scale` going back (the reference's ScaleGradient)."""
    fixed = x.detach()
    return fixed + scale * (x - fixed)


def feature_error(D, reconstructed, real):
    """L_llike per image, batch mean: the reconstruction error measured on D's features (D.features), as the
    negative log-likelihood of a Gaussian of unit variance there: half the summed squares of the difference.

    Reconstructions and reals go through D's layers as one batch, as in the reference, so its BatchNorm
    normalises both alike. Call it with D frozen: L_llike trains the encoder and the decoder, never D.
    """
    n = real.shape[0]
    features = D.features(paddle.concat([reconstructed, real]))
    return reconstruction_error(features[n:], features[:n]).mean()


def vaegan_vae_losses(E, G, D, real, noise):
    """The VAE/GAN's VAE half: (z, KL, L_llike) for `real`, z = mean + exp(logvar / 2) eps with eps = noise(shape).
    Call it with D frozen (L_llike trains E and G, never D). The eager step's and faststep.VAEGANStep's."""
    z, kl = encode(E, real, noise)
    return z, kl, feature_error(D, G(z), real)


def vaegan_gan_losses(G, D, T, real, z, noise, z_dim, d_reconstructions):
    """The VAE/GAN's GAN half: (D's logits, err_R, err_F) on the reals and G's faces of prior noise (and of the
    encoded z, not differentiated, with `d_reconstructions`) as one batch, T drawn once per image. G's faces
    pass through scale_gradient(-2): G's gradient of 0.5 L_GAN reversed and doubled, that of -L_GAN."""
    n = real.shape[0]
    z_fake = noise([n, z_dim])
    if d_reconstructions:
        z_fake = paddle.concat([z.detach(), z_fake])
    logits = D(T(paddle.concat([real, scale_gradient(G(z_fake), -2.0)])))
    return logits, _bce(logits[:n], paddle.ones([n])), _bce(logits[n:], paddle.zeros([logits.shape[0] - n]))


class VAEGANMethod(Method):
    """The VAE/GAN of Larsen et al. 2016, "Autoencoding beyond pixels using a learned similarity metric", the
    Torch blog's "going further", ported from the authors' code (andersbll/autoencoding_beyond_pixels,
    model/aegan.py). Encoder E, decoder G and discriminator D share z ~ N(0, I); per iteration:

    - E minimises KL + L_llike, where L_llike is the reconstruction error on D's features (feature_error);
    - G minimises gamma * L_llike - L_GAN, with L_GAN = BCE(D(x), real) + BCE(D(G(z_p)), fake) (batch means)
      on prior samples z_p: the reference's minimax sign and weights (gamma: --gamma). The reals' term
      reaches G only through D's BatchNorm, since reals and fakes are one batch there, as in the reference.
      GAN gradients do not reach E;
    - D minimises 0.5 BCE(D(x), real) + 0.5 BCE(D(G(z_p)), fake), reals and fakes as one batch; with
      --d-reconstructions the fakes also include the reconstructions G(z), z not differentiated (see below).
      With --augment D sees T of that batch (augment.py); L_llike's features stay those of the images;
    - the balancing rule (--balance equilibrium, the reference's; margin, the Torch blog's; none) decides
      on err_R and err_F whether D and G step. E always steps. A skipped G skips its whole update, as the
      reference's `dec_update` does.

    One forward of each network per loss and three backward passes; RMSProp by default, as the reference.
    On the CPU the iteration runs as faststep.VAEGANStep's static program, built from the same two halves
    (vaegan_vae_losses, vaegan_gan_losses).

    On --d-reconstructions: the paper's Algorithm 1 has D classify reconstructions too. In the reference
    code (aegan.py, AEGAN.setup) `sample_z=True`, the default of every script, concatenates the encoded z
    (its gradient to E scaled by 0) with the prior samples, so D sees reconstructions there as well. The
    flag offers both; off by default.
    """
    order = ("E", "G", "D")
    loss_label = "loss"
    headline = ("loss_E", "loss_D", "err_R", "err_F")
    DEFAULTS = dict(z_dim=100, optimizer="rmsprop", lr=3e-4, beta1=0.9, beta2=0.999, balance="equilibrium",
                    gamma=1e-2, augment="none")
    # lr: the reference's RMSProp starts at 0.02 per batch of 64 on summed losses, 3e-4 per image; it
    # anneals it over 150 epochs, which this constant rate does not.

    @classmethod
    def defaults(cls, cfg, embedded):
        balance = cfg.balance or cls.DEFAULTS["balance"]
        return {**cls.DEFAULTS, "margin": MARGINS.get(balance, MARGINS["equilibrium"])}

    @classmethod
    def default_help(cls, name):
        return BCEMethod.default_help(name) if name == "margin" else super().default_help(name)

    def __init__(self, cfg, arch, size, procs):
        super().__init__(cfg, arch, size, procs)
        if cfg.balance == "l2":
            raise ConfigError(f"--balance l2 is the Torch blog's rule for a plain GAN; --arch {arch} balances with "
                              "equilibrium, margin or none")
        self.opts = {name: make_optimizer(cfg.optimizer, cfg.lr, cfg.beta1, cfg.beta2, net.parameters())
                     for name, net in self.nets.items()}
        self.tricks = Tricks(balance=cfg.balance, margin=cfg.margin, optimizer=cfg.optimizer, lr=cfg.lr)

    def load_state(self, state):
        self.tricks = self.tricks.continued(state)
        self.load_regularity(state)

    def start(self, pos, device):
        cfg = self.cfg
        self.path = choose_step(cfg.step, device, self.arch, self.procs.world)
        self.run = {name: self.procs.wrap(net) for name, net in self.nets.items()}
        if self.path == "static":
            self.fast = static_steps().VAEGANStep(self.arch, self.args, cfg.batch_size, cfg.lr, cfg.beta1, cfg.beta2,
                                            cfg.gamma, cfg.d_reconstructions, self.T, self.tricks,
                                            (vaegan_vae_losses, vaegan_gan_losses))
            self.fast.load(self.nets, self.opts)

    def static_step(self, real):
        stats = self.fast(real)
        self.stale = True
        checks = {name: stats.pop(f"{name}_check") for name in self.order}
        return self.regularised(stats, real.shape[0]), checks

    def step(self, real, pos):
        cfg, procs, tricks = self.cfg, self.procs, self.tricks
        E, G, D = self.run["E"], self.run["G"], self.run["D"]
        self.own_noise(pos)
        if self.fast is not None:
            return self.static_step(real)
        for opt in self.opts.values():
            opt.clear_grad()
        # the VAE: E's loss KL + L_llike; G keeps gamma times L_llike's gradient
        with frozen(self.nets["D"]):
            z, kl, llike = vaegan_vae_losses(E, G, self.nets["D"], real, paddle.randn)
            (kl + llike).backward()
        with paddle.no_grad():
            for p in self.nets["G"].parameters():
                if p.grad is not None:
                    p.grad.scale_(cfg.gamma)
        # the GAN: D's loss 0.5 L_GAN; G's gradient of it reversed and doubled, the gradient of -L_GAN
        n = real.shape[0]
        logits, err_real, err_fake = vaegan_gan_losses(G, D, self.T, real, z, paddle.randn, cfg.z_dim,
                                                       cfg.d_reconstructions)
        (0.5 * err_real + 0.5 * err_fake).backward()
        update_d, update_g = tricks.decide(*agreed([float(err_real), float(err_fake)], tricks, procs.mean))
        reduce = self.reduce
        for name, stepping in (("E", True), ("G", update_g), ("D", update_d)):
            if reduce:  # every process joins every reduction, whatever the rule decided
                reduce(self.opts[name])
            if stepping:
                self.opts[name].step()
        probs = F.sigmoid(logits)
        stats = {"loss_E": float(kl + llike), "kl": float(kl), "llike": float(llike),
                 "loss_G": cfg.gamma * float(llike) - float(err_real + err_fake),
                 "loss_D": float(0.5 * err_real + 0.5 * err_fake),
                 "err_R": float(err_real), "err_F": float(err_fake),
                 "D_real": float(probs[:n].mean()), "D_fake": float(probs[n:].mean()),
                 "sign_real": float(paddle.sign(logits[:n]).mean())}
        return self.regularised(stats, n), weight_checks(self.nets)

    def state(self, pos):
        return {**self.tricks.state(), **self.regularity_state()}

    def log_fields(self, stats):
        return {"d_skips": self.tricks.d_skips, "g_skips": self.tricks.g_skips, **self.regularity_fields()}

    def summary(self, record):
        return f", skipped D {record['d_skips']}, G {record['g_skips']}"

    def plots(self, history, folder):
        plot_curves(history, {"kl": "KL to N(0, I)", "llike": "L_llike: reconstruction error on D's features"},
                    "per-image loss", os.path.join(folder, "loss.png"))
        plot_monitor(history, self.tricks.band(), os.path.join(folder, "monitor.png"), gen=None)  # loss_G: no BCE
        self.plot_regularity(history, folder)
