"""Keeping D and G in balance: the 2015 Torch blog's rules and the label tricks of "Make Your Own GAN".

Pure rules, each a small function with table tests (tests/test_balance.py):

- `margin_rule`: the blog's skip rule. From one D forward pass of the batch, with
  err_R = BCE(D(real), 1) and err_F = BCE(D(fake), 0): D's update is skipped when it is
  already too good (err_R or err_F below the margin), G's when D is too bad (err_R or
  err_F above 1 - margin); when both would be skipped, both update.
- `equilibrium_rule`: the rule of Larsen et al.'s VAE/GAN code (andersbll/autoencoding_beyond_pixels,
  model/aegan.py, GradientDescent.train_epoch): D's update is skipped while err_R or err_F is below
  equilibrium - margin (0.68 - 0.35), G's while either is above equilibrium + margin; when both
  would be skipped, both update. 0.68 is about ln 2 = 0.693, the BCE of a D that cannot tell.
- `l2_step`: the blog's adaptive weight decay on D: its coefficient rises by 1e-5 while
  G's loss is above 1.3 (D winning), falls by 1e-5 below 0.9, never below 0.
- `rmsprop_lr`: the blog's RMSProp warm-up: lr / 50 for the first 10 updates, lr / 5 until 30.
- `label_targets`: soft real labels (0.9 instead of 1), optional jitter, random flips.

`Tricks` holds the options and the state they carry across iterations (the L2 coefficient,
update and skip counts), which checkpoints keep so that a resumed run continues exactly.
`Tricks()` is the tutorial's plain GAN: methods.bce_iteration then computes exactly what it
computes without tricks.

Example:
    tricks = Tricks(balance="margin", margin=0.3, optimizer="rmsprop")
    skip_d, skip_g = tricks.skips(err_real=0.2, err_fake=0.5)   # (True, False): D wins, G catches up
"""
import operator
from dataclasses import asdict, dataclass, replace

import runtime  # noqa: F401  (before Paddle: thread and MKL settings)
import paddle

BALANCES = ("none", "margin", "equilibrium", "l2")
EQUILIBRIUM = 0.68                            # the VAE/GAN code's equilibrium BCE
MARGINS = {"margin": 0.3, "equilibrium": 0.35}   # the blog's margin; the VAE/GAN code's gan_margin
OPTIMIZERS = ("adam", "rmsprop")
L2_STEP, L2_UP, L2_DOWN = 1e-5, 1.3, 0.9      # the blog's adaptive weight decay
WARMUP = ((10, 50.0), (30, 5.0))              # (until this many updates, divide lr by)
COUNTERS = ("coef_l2", "d_updates", "g_updates", "d_skips", "g_skips")   # Tricks' running state


def python_logic():
    """The boolean operations of `skip_flags` on Python's bools: (or, and, not)."""
    return operator.or_, operator.and_, operator.not_


def skip_flags(err_real, err_fake, low, high, logic=None):
    """(skip D, skip G) for one batch's D errors and a rule's band (Tricks.band): D's update is skipped while either
    error is below `low` (D already wins), G's while either is above `high` (D is lost: G learns nothing from it);
    when both would be skipped, both update. The one definition of the skip rules: the eager step decides on the
    errors' float values, the static program on its tensors with `logic`, its (or, and, not)."""
    either, both, negate = logic or python_logic()
    below = either(err_real < low, err_fake < low)
    above = either(err_real > high, err_fake > high)
    return both(below, negate(above)), both(above, negate(below))


def margin_rule(err_real, err_fake, margin):
    """(update D, update G) by the blog's rule for one batch's D errors."""
    skip_d, skip_g = skip_flags(err_real, err_fake, margin, 1 - margin)
    return not skip_d, not skip_g


def equilibrium_rule(err_real, err_fake, margin, equilibrium=EQUILIBRIUM):
    """(update D, update G) by the VAE/GAN code's rule for one batch's D errors."""
    skip_d, skip_g = skip_flags(err_real, err_fake, equilibrium - margin, equilibrium + margin)
    return not skip_d, not skip_g


def l2_step(coef, loss_g):
    """The next L2 coefficient of D's weights after an iteration whose G loss was `loss_g`."""
    if loss_g > L2_UP:
        coef += L2_STEP
    elif loss_g < L2_DOWN:
        coef -= L2_STEP
    return max(0.0, coef)


def rmsprop_lr(lr, updates):
    """The learning rate of an optimizer's next update after `updates` of them, with the blog's warm-up."""
    for until, divide in WARMUP:
        if updates < until:
            return lr / divide
    return lr


def label_targets(like, label, jitter=0.0, flip=0.0):
    """BCE targets shaped like `like`: `label` (1 for real, 0 for fake), soft, jittered, flipped.

    A real label below 1 (say 0.9) is the one-sided soft label; `jitter` draws each target
    uniformly within +-jitter of it (clipped to [0, 1]); `flip` swaps a target with 1 - target
    with that probability. Random draws come from Paddle's generator, so runs repeat and resume.
    """
    t = paddle.full_like(like, label)
    if jitter:
        t = paddle.clip(t + paddle.uniform(like.shape, min=-jitter, max=jitter), 0.0, 1.0)
    if flip:
        flipped = paddle.rand(like.shape) < flip
        t = paddle.where(flipped, 1.0 - t, t)
    return t


@dataclass
class Tricks:
    """Balancing options and their running state; Tricks() is the plain GAN."""
    balance: str = "none"        # none, margin, equilibrium or l2
    margin: float = 0.3          # the skip rule's margin (0.35 is equilibrium's)
    optimizer: str = "adam"      # adam or rmsprop (with the blog's warm-up)
    lr: float = 2e-4             # base learning rate (for the RMSProp warm-up)
    real_label: float = 1.0      # target for real images in D's loss (0.9: soft labels)
    label_jitter: float = 0.0    # +- uniform noise on the real and fake targets
    flip_labels: float = 0.0     # probability of swapping a target
    # state, kept in checkpoints
    coef_l2: float = 0.0
    d_updates: int = 0
    g_updates: int = 0
    d_skips: int = 0
    g_skips: int = 0

    @property
    def plain(self):
        """The tutorial's GAN: Adam, no balancing, no label tricks."""
        return self.balance == "none" and self.optimizer == "adam" and self.plain_labels

    @property
    def plain_labels(self):
        return self.real_label == 1.0 and not self.label_jitter and not self.flip_labels

    def targets(self, logits_real, logits_fake):
        """D's BCE targets for a real and a fake batch of logits."""
        if self.plain_labels:
            return paddle.ones_like(logits_real), paddle.zeros_like(logits_fake)
        return (label_targets(logits_real, self.real_label, self.label_jitter, self.flip_labels),
                label_targets(logits_fake, 0.0, self.label_jitter, self.flip_labels))

    def skips(self, err_real, err_fake, logic=None):
        """(skip D, skip G) by this rule for one batch's D errors (skip_flags), or (None, None) for a rule that
        never skips. Counting the skips is the iteration's end's (`count_skips`)."""
        if not self.skipping:
            return None, None
        return skip_flags(err_real, err_fake, *self.band(), logic)

    def count_skips(self, skips_d, skips_g):
        """Count an iteration's skipped updates: its flags (bools or None) per D step."""
        self.d_skips += sum(bool(f) for f in skips_d if f is not None)
        self.g_skips += sum(bool(f) for f in skips_g if f is not None)

    @property
    def skipping(self):
        """Whether a rule may skip updates (then every process must decide on the same errors)."""
        return self.balance in ("margin", "equilibrium")

    def band(self):
        """(low, high): the D errors between which the rule skips nothing, for the monitor plot."""
        if self.balance == "equilibrium":
            return EQUILIBRIUM - self.margin, EQUILIBRIUM + self.margin
        return self.margin, 1 - self.margin

    def step(self, opt, net):
        """opt.step() with the warm-up learning rate; `net` is 'D' or 'G'."""
        if self.optimizer == "rmsprop":
            opt.set_lr(rmsprop_lr(self.lr, self.updates(net)))
        opt.step()
        self.count_updates(net, 1)

    def updates(self, net):
        """How many updates of `net` ('D' or 'G') were counted."""
        return getattr(self, f"{net.lower()}_updates")

    def count_updates(self, net, count):
        """Count `count` more updates of `net` ('D' or 'G')."""
        setattr(self, f"{net.lower()}_updates", self.updates(net) + count)

    def after(self, loss_g):
        """End of an iteration whose G loss was `loss_g`: the L2 coefficient follows it."""
        if self.balance == "l2":
            self.coef_l2 = l2_step(self.coef_l2, loss_g)

    def state(self):
        return asdict(self)

    def continued(self, state):
        """These options with the running state (L2 coefficient, update and skip counts) of a checkpoint's `state`."""
        return replace(self, **{k: v for k, v in state.items() if k in COUNTERS})


def l2_penalty(D, coef, ops=None):
    """The blog's adaptive L2 term of D's loss, coef * ||theta_D||^2 / 2 (coef a number, or the static program's input;
    `ops.sum`: paddle.sum by default, network.PADDLE_OPS)."""
    total = ops.sum if ops else paddle.sum
    return coef * paddle.add_n([total(p * p) for p in D.parameters() if p.trainable]) / 2


def make_optimizer(name, lr, beta1, beta2, parameters):
    """The tutorial's Adam, or the blog's RMSProp (decay 0.9; its warm-up is Tricks.step's)."""
    if name == "rmsprop":
        return paddle.optimizer.RMSProp(learning_rate=lr, rho=0.9, epsilon=1e-8, parameters=parameters)
    return paddle.optimizer.Adam(learning_rate=lr, beta1=beta1, beta2=beta2, parameters=parameters)


# ----------------------------------------------------------------------------- LeCam

LECAM_DECAY = 0.99   # the moving averages' decay (lecam-gan's ema_losses)


def lecam_term(out_real, out_fake, ema_real, ema_fake):
    """LeCam's regulariser (Tseng et al. 2021, google/lecam-gan losses.py lecam_reg), unweighted:
    mean(relu(D(real) - ema_fake)^2) + mean(relu(ema_real - D(fake))^2), on D's raw outputs.

    It is 0 while D's outputs on reals stay below the average of its outputs on fakes and those on
    fakes above the average on reals: it keeps D's outputs near where they have been, not ever further apart.
    Paddle ops, so the static step builds it too; `ema_*` may be numbers or tensors.
    """
    return ((paddle.nn.functional.relu(out_real - ema_fake) ** 2).mean()
            + (paddle.nn.functional.relu(ema_real - out_fake) ** 2).mean())


def lecam_average(average, mean, decay):
    """A LeCam moving average after a batch whose mean output is `mean` (numbers, or the static program's tensors)."""
    return decay * average + (1 - decay) * mean


class LeCam:
    """--lecam W: W * lecam_term with moving averages of D's mean output on reals and on fakes.

    The averages take each batch before its term is computed; the first batch sets them (no pull
    towards an arbitrary start). Their values are kept in checkpoints (`state`).
    """

    def __init__(self, weight, decay=LECAM_DECAY):
        self.weight, self.decay, self.real, self.fake = weight, decay, None, None

    def next_decay(self):
        """The decay of the next update: 0 for the first batch, which sets the averages."""
        return 0.0 if self.real is None else self.decay

    def follow(self, mean_real, mean_fake):
        """Move the averages by one batch's mean outputs."""
        decay = self.next_decay()
        self.real, self.fake = (lecam_average(v or 0.0, mean, decay)
                                for v, mean in ((self.real, mean_real), (self.fake, mean_fake)))

    def __call__(self, out_real, out_fake):
        """The weighted term for this batch's outputs, after the averages took them."""
        self.follow(float(out_real.mean()), float(out_fake.mean()))
        return self.weight * lecam_term(out_real, out_fake, self.real, self.fake)

    def state(self):
        return {"real": self.real, "fake": self.fake}

    def load(self, state):
        self.real, self.fake = state["real"], state["fake"]
