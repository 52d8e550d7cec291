"""Progressive growing (Karras et al. 2018): the schedule, the WGAN-GP losses, G's moving average.

The networks are network.PGGANGenerator / PGGANDiscriminator; train.py --arch pggan runs this
recipe with them:

- Schedule in images shown (`stage`): 4x4 first stabilises for one phase, then each next
  resolution fades in for a phase (alpha 0 -> 1) and stabilises for another; after the
  last one training stays at the final resolution. A phase is --phase-kimg thousand images.
- Batch size per resolution from a table (`parse_batch_sizes`, --batch-sizes "4:64,8:64,...").
- Real images are the dataset's, area-averaged to the current resolution and, during a fade,
  blended like G's output: lerp(x, upsample(avgpool(x)), 1 - alpha).
- WGAN-GP: D loss = D(fake) - D(real) + 10 (||grad D(x_hat)|| - 1)^2 + 0.001 D(real)^2 with
  x_hat = lerp(real, fake, u), u ~ U[0, 1] per image; G loss = -D(G(z)). Adam lr 1e-3, betas
  (0, 0.99), eps 1e-8, one D step per G step; fresh optimizer state when a phase starts.
- G's exponential moving average (beta 0.999, with TensorFlow's warm-up for short runs) is
  what sample grids and generator.py draw with.

Example:
    res, alpha, phase = stage(images_seen=9000, phase_images=6000, size=32)   # (8, 0.5, 1)
"""
import runtime  # noqa: F401  (before Paddle: thread and MKL settings)
import paddle

from network import downsample, upsample

GP_WEIGHT, DRIFT = 10.0, 0.001   # the official loss weights
EMA_BETA = 0.999


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


def gradient_penalty(D, real, fake):
    """10 * mean over images of (||grad_x D(x_hat)|| - 1)^2, x_hat = lerp(real, fake, u)."""
    u = paddle.rand([real.shape[0], 1, 1, 1])
    x_hat = real + (fake - real) * u
    x_hat.stop_gradient = False
    grad, = paddle.grad(D(x_hat).sum(), x_hat, create_graph=True)
    norm = paddle.sqrt((grad * grad).reshape([grad.shape[0], -1]).sum(axis=1) + 1e-12)
    return GP_WEIGHT * ((norm - 1.0) ** 2).mean()


def ema_beta(updates, beta=EMA_BETA):
    """The moving average's beta after `updates` G updates: 0.999, warming up as TensorFlow's
    ExponentialMovingAverage does, min(beta, (1 + t) / (10 + t)), so that a short run's average
    is not mostly its random initial weights (0.999 ** 800 = 0.45)."""
    return min(beta, (1 + updates) / (10 + updates))


def ema_update(G_ema, G, beta=EMA_BETA):
    """G_ema <- beta G_ema + (1 - beta) G, parameter by parameter."""
    with paddle.no_grad():
        for e, p in zip(G_ema.parameters(), G.parameters()):
            e.set_value(e * beta + p * (1.0 - beta))


def iteration(G, D, G_ema, opt_G, opt_D, real, z_dim, res, alpha, reduce=None, updates=None):
    """One D step and one G step of WGAN-GP at (res, alpha); returns the numbers for the log.

    `updates`: G updates before this one, for the moving average's warm-up (None: plain 0.999).
    """
    for net in (G, D, G_ema):
        net.set_stage(res, alpha)
    real = real_at(real, res, alpha)
    n = real.shape[0]
    with paddle.no_grad():
        fake = G(paddle.randn([n, z_dim]))
    score_real, score_fake = D(real), D(fake)
    gp = gradient_penalty(D, real, fake)
    wasserstein = score_fake.mean() - score_real.mean()
    loss_D = wasserstein + gp + DRIFT * (score_real * score_real).mean()
    opt_D.clear_grad()
    loss_D.backward()
    if reduce:
        reduce(opt_D)
    opt_D.step()

    params = [p for p in D.parameters() if not p.stop_gradient]
    for p in params:  # G's update needs no D weight gradients
        p.stop_gradient = True
    try:
        loss_G = -D(G(paddle.randn([n, z_dim]))).mean()
        opt_G.clear_grad()
        loss_G.backward()
        if reduce:
            reduce(opt_G)
        opt_G.step()
    finally:
        for p in params:
            p.stop_gradient = False
    ema_update(G_ema, G, EMA_BETA if updates is None else ema_beta(updates))
    return {"loss_D": float(loss_D), "loss_G": float(loss_G), "gp": float(gp), "wasserstein": float(-wasserstein),
            "D_real": float(score_real.mean()), "D_fake": float(score_fake.mean())}
