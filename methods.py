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

Each method writes its iteration once (Method.iteration), against a `run` that answers its calls
(noise, numbers, updates, skip rules, ...): Eager, here, runs it in Paddle's eager mode, and
faststep.Recording records the same function as a static CPU program (--step static).

Here: the base class, Eager, the helpers every iteration uses (`frozen`, `update`, `ema_update`), and
the methods: BCEMethod (the tutorial's DCGAN recipe with the Torch blog's balancing and label tricks),
VAEMethod and VAEGANMethod. progressive.py holds PG-GAN's ProgressiveMethod.

Example:
    run = Eager({"G": G, "D": D}, {"G": opt_G, "D": opt_D}, counter=Tricks())   # the plain GAN
    stats = bce_numbers(run.values(bce_iteration(run, real, 100, 1, 2, run.counter)), run.counter)
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
from balance import MARGINS, LeCam, Tricks, l2_penalty, make_optimizer
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


def ema_update(G_ema, G, beta, rest=None, assign=None):
    """G_ema <- beta G_ema + rest G for the trained parameters (rest: 1 - beta); BatchNorm's statistics copied, as
    stylegan2-ada-pytorch copies buffers. `assign(target, value)` writes (the eager step's `set_value`, the
    static program's assign op); `beta` and `rest` are numbers there, the program's inputs here."""
    rest, assign = 1.0 - beta if rest is None else rest, assign or set_value
    with paddle.no_grad():
        for e, p in zip(G_ema.parameters(), G.parameters()):
            assign(e, p if p.stop_gradient else e * beta + p * rest)


def set_value(target, value):
    """`assign` of the eager step: `target` takes `value`'s numbers."""
    target.set_value(value)


class Eager:
    """What a method's iteration (Method.iteration) asks of its step, done now in Paddle's eager mode.

    The iteration is each method's one definition of its maths: the eager step runs it with this object, and
    faststep.Recording runs the same function while recording it as a static program, with the same calls
    answered by program ops. Here, noise is drawn from Paddle's generator, a skip rule decides on the errors'
    float values (their means over processes, so that every process decides alike), an update is a backward
    and an optimizer step (gradients averaged over processes), and a skipped update or phase is not computed.
    """
    input_gradient = "autograd"   # how WGAN-GP's penalty takes D's input gradient (progressive.input_gradient)
    ops = network.PADDLE_OPS      # the functions the iteration's maths calls by `ops` (network.PADDLE_OPS)

    def __init__(self, nets, opts, running=None, T=None, counter=None, lecam=None, procs=None, reduce=None,
                 numbers=None):
        self.plain = nets                       # the networks, for their attributes (set_stage, features, ...)
        self.nets = running or nets             # for forwards: wrapped for several processes
        self.opts, self.T, self.counter, self.regulariser = opts, T or same, counter, lecam   # LeCam: balance.LeCam
        self.procs, self.reduce, self.numbers = procs, reduce, dict(numbers or {})
        self.cleared = set()

    def noise(self, shape):
        """N(0, 1) numbers of `shape`."""
        return paddle.randn(shape)

    def uniform(self, shape):
        """U[0, 1) numbers of `shape`."""
        return paddle.rand(shape)

    def number(self, name):
        """The iteration's number `name` (Method.numbers): a float here, an input of the static program."""
        return self.numbers[name]

    def targets(self, tricks, logits_real, logits_fake):
        """D's BCE targets with the label tricks (balance.Tricks.targets), drawn from Paddle's generator."""
        return tricks.targets(logits_real, logits_fake)

    def decide(self, tricks, err_real, err_fake):
        """(skip D, skip G) by the balancing rule on D's errors: bools, or None for a rule that never skips."""
        if not tricks.skipping:
            return None, None
        errors = [float(err_real), float(err_fake)]
        if self.procs is not None and self.procs.world > 1:
            errors = self.procs.mean(errors)
        return tricks.skips(*errors)

    def lecam(self, out_real, out_fake):
        """The method's LeCam term (balance.LeCam) for D's outputs, after its averages took them."""
        return self.regulariser(out_real, out_fake)

    def _opts(self, keys):
        return [self.opts[k] for k in ((keys,) if isinstance(keys, str) else keys)]

    def update(self, keys, loss, skip=None):
        """The update of the networks `keys` (a name, or a tuple that the one loss updates together) by `loss`:
        backward, gradients averaged over processes, each optimizer's step; nothing where `skip` is true."""
        if skip:
            return
        opts = self._opts(keys)
        if self.counter is None:
            update(opts if len(opts) > 1 else opts[0], loss, self.reduce)
        else:   # one network's update, counted, at RMSProp's warm-up rate (balance.Tricks.step)
            update(*opts, loss, self.reduce, functools.partial(self.counter.step, net=keys))

    def backward(self, loss, keys):
        """Add `loss`'s gradients to those of the networks `keys` (the first backward of a key in an iteration
        starts from zero); `step` then updates."""
        for opt in self._opts(keys):
            if id(opt) not in self.cleared:
                opt.clear_grad()
                self.cleared.add(id(opt))
        loss.backward()

    def scale(self, key, factor):
        """Multiply network `key`'s gradients so far by `factor`."""
        with paddle.no_grad():
            for p in self.plain[key].parameters():
                if p.grad is not None:
                    p.grad.scale_(factor)

    def step(self, key, skip=None):
        """Network `key`'s optimizer step on its gradients (averaged over processes first, whatever `skip` says,
        so that every process joins every reduction); none where `skip` is true."""
        opt, = self._opts(key)
        if self.reduce:
            self.reduce(opt)
        if not skip:
            opt.step()

    def phase(self, skip, body, keys):
        """`body()`, the updates of the networks `keys`, unless `skip` is true (then None)."""
        return None if skip else body()

    @staticmethod
    def assign(target, value):
        set_value(target, value)

    @staticmethod
    def values(out):
        """The iteration's returned tensors as floats (lists of them as lists); flags and None as they are."""
        def number(v):
            return float(v) if isinstance(v, paddle.Tensor) else v
        return {k: [number(x) for x in v] if isinstance(v, list) else number(v) for k, v in out.items()}


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
        self.counter = None      # balance.Tricks whose update counters (and RMSProp warm-up) the updates move
        self.running = self.nets # the networks the eager iteration runs forwards through (`start` wraps them)
        # the static CPU step (faststep.Recording of `iteration`), which holds the weights while it trains, the
        # structure it was recorded for, and whether self.nets and self.opts lag behind it
        self.fast, self.fast_key, self.stale = None, None, False
        self.static_options = {}   # faststep.Recording's keyword arguments (benchmarks/onednn_ops.py: its oneDNN ops)
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
    def defaults(cls, cfg, small):
        """{setting: value} for this method's settings, given the rest of `cfg` and whether the data is small."""
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

    def initialise(self, source):
        """Start from the networks of another run's checkpoint `source` (--init-from), not its optimizers or method
        state. G's moving average starts from the source's average where it has one, else from the source's G."""
        for name, net in self.nets.items():
            net.set_state_dict(source[name if name in source else "G"])   # G_ema: the source's G if it has none

    def parts(self):
        """{name: state} of every network and optimizer, for the checkpoint."""
        return {**{name: net.state_dict() for name, net in self.nets.items()},
                **{"opt_" + name: checkpoint.optimizer_state(opt, self.nets[name]) for name, opt in self.opts.items()}}

    def start(self, pos, device):
        """Set up the step for a run at position `pos` (after any checkpoint was loaded): the eager step or the
        static one (choose_step), and the trained networks wrapped for several processes."""
        self.path = choose_step(self.cfg.step, device, self.arch, self.procs.world)
        self.running = {k: self.procs.wrap(net) if k in self.opts else net for k, net in self.nets.items()}
        self.fast, self.fast_key = None, None

    def own_noise(self, pos):
        """With several processes, give each its own noise for the iteration at `pos`: Paddle's generator seeded
        from (seed, rank, iteration), so a resumed run draws the same."""
        if self.procs.world > 1:
            entropy = [self.cfg.seed, self.procs.rank, pos.iteration]
            paddle.seed(int(np.random.SeedSequence(entropy).generate_state(1)[0]))

    # --- the iteration: one definition, which the eager step runs and the static step records

    def optimizers(self, nets):
        """{name: optimizer} of the networks `nets` that an iteration updates (the eager ones at construction; the
        static program's own, built from its networks)."""
        raise NotImplementedError

    def iteration(self, run, real, **structure):
        """The method's iteration on the batch `real`, written once: `run` is an Eager, or a faststep.Recording
        that records the same calls as a static program. Returns {name: tensor, list of tensors, flag or None}:
        the numbers `finish` turns into the log's. `structure` is what a program is recorded for (`structure`)."""
        raise NotImplementedError

    def structure(self, pos):
        """The iteration's arguments at `pos` that shape its program (PG-GAN's resolution and fade); a new static
        program is recorded when they change."""
        return {}

    def numbers(self, pos):
        """{name: float} that the iteration at `pos` reads (run.number): the static program's inputs."""
        return {}

    def prepare(self, real, pos):
        """The batch as the iteration at `pos` takes it."""
        return real

    def finish(self, values):
        """The log's numbers from the iteration's values (floats, lists of floats, flags), and the method's state
        that they move (counters)."""
        return values

    def step(self, real, pos):
        """One iteration on the batch `real`: ({name: number} for the log, weight_checks of the trained networks)."""
        self.own_noise(pos)
        real, numbers, structure = self.prepare(real, pos), self.numbers(pos), self.structure(pos)
        if self.path == "static":
            values, checks = self.program(real.shape, structure)(real, numbers)
            self.stale = True
        else:
            run = Eager(self.nets, self.opts, self.running, self.T, self.counter, self.lecam, self.procs, self.reduce,
                        numbers)
            values = run.values(self.iteration(run, real, **structure))
            checks = weight_checks({k: self.nets[k] for k in self.opts})
        return self.regularised(self.finish(values), real.shape[0]), checks

    def recorded(self):
        """The networks that the static program holds: those the iteration updates, and G's moving average where
        the iteration moves it."""
        return tuple(self.opts)

    def program(self, shape, structure):
        """The static step recorded for `structure` and batches of `shape` (a new one when either changes)."""
        key = (tuple(shape), tuple(sorted(structure.items())))
        if self.fast is None or key != self.fast_key:
            self.sync()
            self.fast = static_steps().Recording(self, shape, structure, **self.static_options)
            self.fast.load(self.nets, self.opts)
            self.fast_key = key
        return self.fast

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


def d_step(run, D, real, fake, tricks, lecam=None):
    """One D forward on a real batch and a fake one (not differentiated into G), and D's update (`run`: an Eager or a
    faststep.Recording, see Method.iteration).

    Returns the tensors loss_D, D_real, D_fake (mean probabilities), err_R = BCE(D(real), 1),
    err_F = BCE(D(fake), 0), sign_real, lecam (with `lecam`), kept_G = BCE(D(fake), 1) (G's loss should G's
    updates be skipped) and the balancing rule's flags skip_D and skip_G (the tricks decide whether D and G
    update; Tricks() always updates both). D sees run.T(real) and run.T(fake) (augment.Augment; one draw each);
    `lecam` adds its term to D's loss.
    """
    # Real and fake go through D separately, so its BatchNorm sees all-real and all-fake batches.
    logits_real, logits_fake = D(run.T(real)), D(run.T(fake.detach()))
    err_real = _bce(logits_real, paddle.ones_like(logits_real))
    err_fake = _bce(logits_fake, paddle.zeros_like(logits_fake))
    skip_d, skip_g = run.decide(tricks, err_real, err_fake)
    if tricks.plain_labels:
        loss_D = err_real + err_fake
    else:
        t_real, t_fake = run.targets(tricks, logits_real, logits_fake)
        loss_D = _bce(logits_real, t_real) + _bce(logits_fake, t_fake)
    total = loss_D   # then the adaptive L2 term, then LeCam's
    if tricks.balance == "l2":
        total = total + l2_penalty(D, run.number("coef_l2"), run.ops)
    reg = run.lecam(logits_real, logits_fake) if lecam else None
    if reg is not None:
        total = total + reg
    run.update("D", total, skip_d)
    ops = run.ops
    out = {"loss_D": loss_D, "D_real": ops.sigmoid(logits_real).mean(), "D_fake": ops.sigmoid(logits_fake).mean(),
           "err_R": err_real, "err_F": err_fake, "sign_real": ops.sign(logits_real).mean(),
           "kept_G": _bce(logits_fake, paddle.ones_like(logits_fake)), "skip_D": skip_d, "skip_G": skip_g}
    if reg is not None:
        out["lecam"] = reg
    return out


def g_step(run, D, fake):
    """One G update from fakes still attached to G's graph: non-saturating BCE(D(T(fake)), 1). Returns the loss."""
    with frozen(D):  # D's weight gradients would be thrown away: do not compute them
        logits = D(run.T(fake))
        loss_G = _bce(logits, paddle.ones_like(logits))
        run.update("G", loss_G)
    return loss_G


def bce_iteration(run, real, z_dim, d_steps, g_steps, tricks, lecam=None):
    """d_steps D updates, then g_steps G updates of run.nets' G and D (`run`: see Method.iteration). Returns the
    last D step's numbers (d_step), losses_G (the G updates' losses, None when skipped), kept_G of the first D step,
    and skips_D, skips_G (the rule's flags of each D step).

    The first G update reuses the fakes of the first D update, graph and all, as the
    PyTorch DCGAN does: the same maths as a second G forward on the same noise, one forward
    fewer. Further D updates draw fresh fakes without a graph; further G updates fresh noise.
    The balancing rule of `tricks` (balance.Tricks) may skip D's updates, and the first D step's word skips
    G's whole phase (BCEMethod.finish then logs kept_G as loss_G). D sees run.T of every image (augment.py).
    """
    G, D = run.nets["G"], run.nets["D"]
    n = real.shape[0]
    fake = G(run.noise([n, z_dim]))
    first, skips_d, skips_g = None, [], []
    for i in range(d_steps):
        more = fake
        if i:
            with paddle.no_grad():
                more = G(run.noise([n, z_dim]))
        out = d_step(run, D, real, more, tricks, lecam)
        skips_d.append(out.pop("skip_D"))
        skips_g.append(out.pop("skip_G"))
        first = first or out

    def g_phase():
        return [g_step(run, D, fake if i == 0 else G(run.noise([n, z_dim]))) for i in range(g_steps)]

    losses = run.phase(skips_g[0], g_phase, ("G",))
    return {**out, "kept_G": first["kept_G"], "losses_G": losses, "skips_D": skips_d, "skips_G": skips_g}


def bce_numbers(values, tricks):
    """The log's numbers of bce_iteration's values (as numbers): loss_G is the G updates' mean loss, or kept_G where
    the rule skipped G's phase. The tricks count the skips, and the L2 coefficient follows loss_G."""
    values = dict(values)
    skips_d, skips_g = values.pop("skips_D"), values.pop("skips_G")
    tricks.count_skips(skips_d, skips_g)
    losses, kept = values.pop("losses_G"), values.pop("kept_G")
    values["loss_G"] = kept if skips_g[0] else float(np.mean(losses))
    tricks.after(values["loss_G"])
    return values


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
    def defaults(cls, cfg, small):
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
        self.opts = self.optimizers(self.nets)
        self.counter = self.tricks = Tricks(balance=cfg.balance, margin=cfg.margin, optimizer=cfg.optimizer, lr=cfg.lr,
                                            real_label=cfg.real_label, label_jitter=cfg.label_jitter,
                                            flip_labels=cfg.flip_labels)
        if cfg.ema:
            self.average_G()

    def optimizers(self, nets):
        cfg = self.cfg
        return {name: make_optimizer(cfg.optimizer, cfg.lr, cfg.beta1, cfg.beta2, nets[name].parameters())
                for name in ("G", "D")}

    def load_state(self, state):
        self.tricks = self.counter = self.tricks.continued(state)
        self.load_regularity(state)

    def numbers(self, pos):
        return {"coef_l2": self.tricks.coef_l2} if self.tricks.balance == "l2" else {}

    def iteration(self, run, real):
        cfg = self.cfg
        return bce_iteration(run, real, cfg.z_dim, cfg.d_steps, cfg.g_steps, self.tricks, self.lecam)

    def finish(self, values):
        return bce_numbers(values, self.tricks)

    def step(self, real, pos):
        out = super().step(real, pos)
        if "G_ema" in self.nets:
            if self.fast is not None:  # the average needs G's new weights every iteration
                self.fast.store_net("G", self.nets["G"])
            ema_update(self.nets["G_ema"], self.nets["G"], ema_beta(pos.iteration))
        return out

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

def kl_divergence(mean, logvar, ops=network.PADDLE_OPS):
    """KL(N(mean, exp(logvar)) || N(0, I)) per image, summed over z: -1/2 sum(1 + logvar - mean^2 - exp(logvar))."""
    return -0.5 * ops.sum(1 + logvar - mean * mean - ops.exp(logvar), axis=1)


def reconstruction_error(x, y, ops=network.PADDLE_OPS):
    """Squared pixel error per image, halved: the negative log-likelihood of x under N(y, I), up to a constant."""
    return 0.5 * ops.sum(((x - y) ** 2).reshape([x.shape[0], -1]), axis=1)


def encode(E, real, noise, ops=network.PADDLE_OPS):
    """(z, KL to N(0, I) as a batch mean) for `real`: E gives the mean and log-variance of z, and
    z = mean + exp(logvar / 2) eps with eps = noise(shape), the reparameterisation of the VAE and the VAE/GAN."""
    mean, logvar = E(real)
    z = mean + ops.exp(0.5 * logvar) * noise(mean.shape)
    return z, kl_divergence(mean, logvar, ops).mean()


def vae_losses(E, G, real, noise, ops=network.PADDLE_OPS):
    """(loss, KL, reconstruction error), batch means, of the VAE on `real`: E gives the mean and log-variance
    of z, z = mean + exp(logvar / 2) eps with eps = noise(shape), G decodes z. The eager step's and the
    static program's, which passes a program input as the noise."""
    z, kl = encode(E, real, noise, ops)
    rec = reconstruction_error(real, G(z), ops).mean()
    return kl + rec, kl, rec


def vae_stats(loss, kl, rec):
    """VAEMethod's numbers for the log from its losses (tensors or floats)."""
    return {"loss_E": float(loss), "loss_G": float(rec), "kl": float(kl), "reconstruction": float(rec)}


class VAEMethod(Method):
    """A variational autoencoder (the Torch blog's "going further", after y0ast's VAE-Torch): encoder E gives
    the mean and log-variance of z, the decoder G draws x from z = mean + exp(logvar / 2) eps; the loss per
    image is KL(q(z|x) || N(0, I)) + the pixel-wise reconstruction error, averaged over the batch, one Adam
    step of both networks per iteration. Faces come from z ~ N(0, I) through G. On the CPU the iteration
    runs as a static program recorded from the same `iteration`."""
    order = ("E", "G")
    loss_label = "per-image loss"
    headline = ("loss_E", "kl", "reconstruction")
    DEFAULTS = dict(z_dim=100, lr=1e-3, beta1=0.9, beta2=0.999)

    def __init__(self, cfg, arch, size, procs):
        super().__init__(cfg, arch, size, procs)
        self.opts = self.optimizers(self.nets)

    def optimizers(self, nets):
        cfg = self.cfg
        return {name: make_optimizer("adam", cfg.lr, cfg.beta1, cfg.beta2, nets[name].parameters())
                for name in ("E", "G")}

    def iteration(self, run, real):
        """vae_losses, then one backward of the loss and each optimizer's step."""
        loss, kl, rec = vae_losses(run.nets["E"], run.nets["G"], real, run.noise, run.ops)
        run.update(("E", "G"), loss)
        return {"loss": loss, "kl": kl, "reconstruction": rec}

    def finish(self, values):
        return vae_stats(values["loss"], values["kl"], values["reconstruction"])

    def plots(self, history, folder):
        plot_curves(history, {"kl": "KL to N(0, I)", "reconstruction": "reconstruction error"}, self.loss_label,
                    os.path.join(folder, "loss.png"))


# ----------------------------------------------------------------------------- VAE/GAN

def scale_gradient(x, scale):
    """`x` unchanged going forward; its gradient multiplied by `scale` going back (the reference's ScaleGradient)."""
    fixed = x.detach()
    return fixed + scale * (x - fixed)


def feature_error(D, reconstructed, real, ops=network.PADDLE_OPS):
    """L_llike per image, batch mean: the reconstruction error measured on D's features (D.features), as the
    negative log-likelihood of a Gaussian of unit variance there: half the summed squares of the difference.

    Reconstructions and reals go through D's layers as one batch, as in the reference, so its BatchNorm
    normalises both alike. Call it with D frozen: L_llike trains the encoder and the decoder, never D.
    """
    n = real.shape[0]
    features = D.features(paddle.concat([reconstructed, real]))
    return reconstruction_error(features[n:], features[:n], ops).mean()


def vaegan_vae_losses(E, G, D, real, noise, ops=network.PADDLE_OPS):
    """The VAE/GAN's VAE half: (z, KL, L_llike) for `real`, z = mean + exp(logvar / 2) eps with eps = noise(shape).
    Call it with D frozen (L_llike trains E and G, never D)."""
    z, kl = encode(E, real, noise, ops)
    return z, kl, feature_error(D, G(z), real, ops)


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
    On the CPU the iteration runs as a static program recorded from the same `iteration`.

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
    def defaults(cls, cfg, small):
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
        self.opts = self.optimizers(self.nets)
        self.tricks = Tricks(balance=cfg.balance, margin=cfg.margin, optimizer=cfg.optimizer, lr=cfg.lr)

    def optimizers(self, nets):
        cfg = self.cfg
        return {name: make_optimizer(cfg.optimizer, cfg.lr, cfg.beta1, cfg.beta2, nets[name].parameters())
                for name in ("E", "G", "D")}

    def load_state(self, state):
        self.tricks = self.tricks.continued(state)
        self.load_regularity(state)

    def iteration(self, run, real):
        """Three backward passes into the networks' gradients, then the steps the balancing rule allows."""
        cfg = self.cfg
        E, G, D = run.nets["E"], run.nets["G"], run.nets["D"]
        # the VAE: E's loss KL + L_llike; G keeps gamma times L_llike's gradient
        with frozen(run.plain["D"]):
            z, kl, llike = vaegan_vae_losses(E, G, run.plain["D"], real, run.noise, run.ops)
            run.backward(kl + llike, ("E", "G"))
        run.scale("G", cfg.gamma)
        # the GAN: D's loss 0.5 L_GAN; G's gradient of it reversed and doubled, the gradient of -L_GAN
        n = real.shape[0]
        logits, err_real, err_fake = vaegan_gan_losses(G, D, run.T, real, z, run.noise, cfg.z_dim,
                                                       cfg.d_reconstructions)
        loss_D = 0.5 * err_real + 0.5 * err_fake
        run.backward(loss_D, ("G", "D"))
        skip_d, skip_g = run.decide(self.tricks, err_real, err_fake)
        for name, skip in (("E", None), ("G", skip_g), ("D", skip_d)):
            run.step(name, skip)
        probs = run.ops.sigmoid(logits)
        return {"loss_E": kl + llike, "kl": kl, "llike": llike, "errors": err_real + err_fake, "loss_D": loss_D,
                "err_R": err_real, "err_F": err_fake, "D_real": probs[:n].mean(), "D_fake": probs[n:].mean(),
                "sign_real": run.ops.sign(logits[:n]).mean(), "skips_D": [skip_d], "skips_G": [skip_g]}

    def finish(self, values):
        values = dict(values)
        self.tricks.count_skips(values.pop("skips_D"), values.pop("skips_G"))
        errors = values.pop("errors")
        return {**values, "loss_G": self.cfg.gamma * values["llike"] - errors}

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
