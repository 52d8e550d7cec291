"""Progressive growing (Karras et al. 2018): the schedule, the WGAN-GP losses, G's moving average.

The networks are network.PGGANGenerator / PGGANDiscriminator; ProgressiveMethod is the
recipe that train.py --arch pggan runs with them (network.ARCHITECTURES names it):

- Schedule in images shown (`stage`): 4x4 first stabilises for one phase, then each next
  resolution fades in for a phase (alpha 0 -> 1) and stabilises for another; after the
  last one training stays at the final resolution. A phase is --phase-kimg thousand images.
- Batch size per resolution from a table (`parse_batch_sizes`, --batch-sizes "4:64,8:64,...").
- Real images are the dataset's, area-averaged to the current resolution and, during a fade,
  blended like G's output: lerp(x, upsample(avgpool(x)), 1 - alpha).
- WGAN-GP: D loss = D(fake) - D(real) + 10 (||grad D(x_hat)|| - 1)^2 + 0.001 D(real)^2 with
  x_hat = lerp(real, fake, u), u ~ U[0, 1] per image; G loss = -D(G(z)). Adam lr 1e-3, betas
  (0, 0.99), eps 1e-8, one D step per G step; fresh optimizer state when a phase starts.
- G's exponential moving average (methods.ema_update: beta 0.999, with TensorFlow's warm-up for
  short runs) is what sample grids and generator.py draw with.
- With --augment, D sees T(real) and T(fake) (augment.py), and the gradient penalty is taken between them.

Example:
    res, alpha, phase = stage(images_seen=9000, phase_images=6000, size=32)   # (8, 0.5, 1)
"""
import runtime  # noqa: F401  (before Paddle: thread and MKL settings)
import paddle

import checkpoint
import network
from balance import make_optimizer
from methods import Method, ema_beta, ema_update, frozen
from network import downsample, upsample
from runtime import ConfigError

GP_WEIGHT, DRIFT = 10.0, 0.001   # the official loss weights
BATCH_SIZES = "4:32,8:32,16:16,32:16,64:16"  # CPU-sized: more updates per phase than the official 4:128 ... 64:16


def stage(images_seen, phase_images, size):
    """(resolution, alpha, phase index) after `images_seen` images; phase 0 is 4x4, then fade/stabilise pairs."""
    levels = size.bit_length() - 3                     # resolutions after 4x4: 8 .. size
    phase = min(images_seen // phase_images, 2 * levels)
    if phase == 0:
        return 4, 1.0, 0
    res = 4 * 2 ** ((phase + 1) // 2)
    if phase % 2 == 1:                                 # fading in
        return res, (images_seen - phase * phase_images) / phase_images, phase
    return res, 1.0, phase


def parse_batch_sizes(text):
    """'4:64,8:64,16:32' -> {4: 64, 8: 64, 16: 32}; ValueError with what is wrong."""
    table = {}
    for item in text.split(","):
        try:
            res, batch = (int(v) for v in item.split(":"))
        except ValueError:
            raise ValueError(f"{item!r} is not RES:BATCH (as in 4:64)") from None
        if res < 4 or res & (res - 1) or batch < 1:
            raise ValueError(f"{item!r}: the resolution must be a power of two >= 4 and the batch >= 1")
        table[res] = batch
    return table


def batch_size(table, res):
    """The table's batch size for `res`: its own entry, else the nearest smaller resolution's."""
    known = [r for r in sorted(table) if r <= res]
    if not known:
        raise ValueError(f"--batch-sizes has no entry for {res}x{res} or below")
    return table[known[-1]]


def real_at(images, res, alpha):
    """Real images (N x 3 x S x S) area-averaged to res x res and blended as G's output is during a fade."""
    while images.shape[-1] > res:
        images = downsample(images)
    if alpha < 1.0:
        coarse = upsample(downsample(images))
        images = coarse + (images - coarse) * alpha
    return images


def input_gradient(D, x, impl="autograd"):
    """The gradient of D's scores' sum at the images `x`, as a differentiable tensor. impl="autograd" (the
    reference) takes it with paddle.grad(create_graph=True), whose backward is a double backward;
    impl="analytic" takes it from PGGANDiscriminator.input_gradient, first-order ops only, which the static
    program builds (it equals autograd to float rounding: tests/test_faststep.py)."""
    if impl == "analytic":
        return D.input_gradient(x)
    x.stop_gradient = False
    grad, = paddle.grad(D(x).sum(), x, create_graph=True)
    return grad


def gradient_penalty(D, real, fake, u, impl="autograd", ops=network.PADDLE_OPS):
    """10 * mean over images of (||grad_x D(x_hat)|| - 1)^2, x_hat = lerp(real, fake, u) (u: [N, 1, 1, 1] in [0, 1))."""
    x_hat = real + (fake - real) * u
    grad = input_gradient(D, x_hat, impl)
    norm = ops.sqrt(ops.sum((grad * grad).reshape([grad.shape[0], -1]), axis=1) + 1e-12)
    return GP_WEIGHT * ((norm - 1.0) ** 2).mean()


def iteration(run, real, z_dim, res, fading, lecam=None):
    """One D step and one G step of WGAN-GP at (res, alpha), and G's moving average (`run`: an Eager or a
    faststep.Recording, see Method.iteration; real: progressive.real_at of the batch). alpha is run.number("alpha")
    while `fading`; the average takes run.number("ema_beta") of itself and "ema_rest" of G. Returns the numbers
    for the log, as tensors.

    D sees T(real) and T(fake) (augment.py) and the gradient penalty is taken between those: D is only ever asked
    for its outputs on augmented images, so that is where its slope must be held near 1; the penalty's
    lines then run between the two distributions D actually compares, as WGAN-GP's argument asks.
    `lecam` (balance.LeCam) adds its term to D's loss.
    """
    G, D, T = run.nets["G"], run.nets["D"], run.T
    alpha = run.number("alpha") if fading else 1.0
    for net in run.plain.values():
        net.set_stage(res, alpha)
    n = real.shape[0]
    with paddle.no_grad():   # eager: no graph for D's fakes; a static program records none under no_grad, hence detach
        fake = G(run.noise([n, z_dim]))
    real, fake = T(real), T(fake.detach())
    score_real, score_fake = D(real), D(fake)
    gp = gradient_penalty(D, real, fake, run.uniform([n, 1, 1, 1]), run.input_gradient, run.ops)
    wasserstein = score_fake.mean() - score_real.mean()
    loss_D = wasserstein + gp + DRIFT * (score_real * score_real).mean()
    reg = run.lecam(score_real, score_fake) if lecam else None
    run.update("D", loss_D if reg is None else loss_D + reg)
    with frozen(run.plain["D"]):  # G's update needs no D weight gradients
        loss_G = -D(T(G(run.noise([n, z_dim])))).mean()
        run.update("G", loss_G)
    ema_update(run.plain["G_ema"], run.plain["G"], run.number("ema_beta"), run.number("ema_rest"), run.assign)
    out = {"loss_D": loss_D, "loss_G": loss_G, "gp": gp, "wasserstein": -wasserstein, "D_real": score_real.mean(),
           "D_fake": score_fake.mean(), "sign_real": run.ops.sign(score_real).mean()}
    if reg is not None:
        out["lecam"] = reg
    return out


class ProgressiveMethod(Method):
    """PG-GAN's recipe: the stage from images shown, a fresh Adam per phase, WGAN-GP, G's moving average.

    The moving average ("G_ema") is what samples, evaluation and generator.py draw with, at
    the stage the run has reached; batch sizes follow the resolution (--batch-sizes).
    """
    sampler = "G_ema"
    loss_label = "WGAN-GP loss"
    DEFAULTS = dict(z_dim=512, lr=1e-3, beta1=0.0, beta2=0.99, batch_sizes=BATCH_SIZES, augment="none", lecam=0.0)
    PHASE_KIMG = 100        # thousands of images per phase, except on small data (train.small_data): one epoch

    @classmethod
    def defaults(cls, cfg, small):
        return {**cls.DEFAULTS, "phase_kimg": cfg.epoch_images / 1000 if small else cls.PHASE_KIMG}

    @classmethod
    def default_help(cls, name):
        if name == "phase_kimg":
            return f"{cls.PHASE_KIMG}; one epoch on small data"
        return super().default_help(name)

    @classmethod
    def share_batches(cls, values, world):
        def per_process(batch):  # minibatch stddev takes groups of 4: keep batches above 4 multiples of 4
            batch = max(1, batch // world)
            return batch - batch % 4 if batch > 4 else batch
        table = parse_batch_sizes(values["batch_sizes"])
        return {**values, "batch_sizes": ",".join(f"{r}:{per_process(b)}" for r, b in table.items())}

    def __init__(self, cfg, arch, size, procs):
        super().__init__(cfg, arch, size, procs)
        self.average_G()
        self.new_optimizers()
        self.size, self.phase_images = size, max(1, round(cfg.phase_kimg * 1000))
        self.start_phase = 0   # --init-from: the phase a run started at

    def new_optimizers(self):
        """Fresh Adam state, as the official code at the start of every phase."""
        self.opts = self.optimizers(self.nets)

    def optimizers(self, nets):
        cfg = self.cfg
        return {name: make_optimizer("adam", cfg.lr, cfg.beta1, cfg.beta2, nets[name].parameters())
                for name in ("G", "D")}

    def batching(self, size):
        spec = self.cfg.batch_sizes
        try:
            table = parse_batch_sizes(spec)
            sizes = {r: batch_size(table, r) for r in network.pggan_channels(size, 1, 1)}
        except ValueError as e:
            raise ConfigError(f"--batch-sizes {spec}: {e}") from None
        if any(b % 4 and b > 4 for b in sizes.values()):
            raise ConfigError(f"--batch-sizes {spec}: minibatch stddev takes groups of 4 images, "
                              "so each batch must be a multiple of 4")
        return max(sizes.values()), lambda shown: sizes[self.at(shown)[0]], "--batch-sizes"

    def at(self, images_seen):
        """(resolution, alpha, phase) after `images_seen` images (of a run that started at phase start_phase)."""
        return stage(images_seen + self.start_phase * self.phase_images, self.phase_images, self.size)

    def initialise(self, source):
        """--init-from: the source's networks, and the schedule from the start of the phase at which the source
        draws (its resolution, stabilised, or its fade)."""
        super().initialise(source)
        stage_ = checkpoint.sampler(source)[2] or {"res": self.size, "alpha": 1.0}
        steps = stage_["res"].bit_length() - 3   # resolutions after 4x4
        self.start_phase = max(0, 2 * steps - (stage_["alpha"] < 1.0))

    def start(self, pos, device):
        super().start(pos, device)
        self.phase = self.at(pos.images_seen)[2]

    def recorded(self):
        return ("G", "D", "G_ema")

    def structure(self, pos):
        res, alpha, _ = self.at(pos.images_seen)
        return {"res": res, "fading": alpha < 1.0}

    def numbers(self, pos):
        alpha, beta = self.at(pos.images_seen)[1], ema_beta(pos.iteration)
        return {"alpha": alpha, "ema_beta": beta, "ema_rest": 1.0 - beta}

    def prepare(self, real, pos):
        res, alpha, _ = self.at(pos.images_seen)
        return real_at(real, res, alpha)

    def iteration(self, run, real, res, fading):
        return iteration(run, real, self.cfg.z_dim, res, fading, self.lecam)

    def step(self, real, pos):
        res, alpha, phase = self.at(pos.images_seen)
        if phase != self.phase:
            self.sync()  # the weights the last phase reached; its optimizer state goes
            self.new_optimizers()
            self.phase, self.fast = phase, None
        stats, checks = super().step(real, pos)
        for net in self.nets.values():  # samples and evaluation draw at the stage reached
            net.set_stage(res, alpha)
        return dict(stats, res=res, alpha=round(alpha, 4)), checks

    def state(self, pos):
        return {"stage": dict(zip(("res", "alpha", "phase"), self.at(pos.images_seen))),
                "start_phase": self.start_phase, **self.regularity_state()}

    def load_state(self, state):
        self.start_phase = state.get("start_phase", 0)
        self.load_regularity(state)

    def stage(self, pos):
        res, alpha, _ = self.at(pos.images_seen)
        return {"res": res, "alpha": alpha}

    def log_fields(self, stats):
        return {"res": stats["res"], "alpha": stats["alpha"], **self.regularity_fields()}

    def plots(self, history, folder):
        super().plots(history, folder)
        self.plot_regularity(history, folder)

    def summary(self, record):
        return f", {record['res']}x{record['res']} alpha {record['alpha']:.2f}"

    def describe(self):
        channels = "/".join(str(c) for c in self.nets["G"].nf.values())
        return ", ".join([f"batches {self.cfg.batch_sizes}", f"{self.cfg.phase_kimg:g}k images per phase",
                          f"channels {channels}"] + self.regularity_words())
