"""Building blocks and the networks composed from them.

Blocks: ConvBlock (conv or transposed conv -> norm -> activation): D's downsampling step,
and G's upsampling step through `up_block`. Networks are short compositions of them; each
keeps its constructor arguments in `.args`, so a checkpoint can rebuild it with
`build_net(name, role, args)`. ARCHITECTURES, at the end, describes each architecture as data:
its networks, the arguments they take, its training method, and which fast paths it has.
A new architecture is one composition of the blocks and one entry there.

DCGAN (Radford et al. 2016, the tutorial's networks): G maps z (N x z_dim) to N x 3 x S x S
in [-1, 1]; D maps N x 3 x S x S to N logits. S is any power of two from 8 up: the
tutorial's 64, or 32 and 128 by removing or adding one block per side.

torchblog (the 2015 Torch blog "Generating Faces with Torch"): G upsamples with nearest
neighbours and 5x5 convolutions (upsample_block), D max-pools with dropout and no BatchNorm
(pool_block); the same interface as DCGAN.

pggan (Karras et al. 2018): equalized-learning-rate convolutions and dense layers, pixel
norm, minibatch stddev, to-RGB / from-RGB per resolution, nearest upsampling and average
pooling; `set_stage(res, alpha)` chooses the resolution and fade (progressive.py schedules it).

Example:
    python -c "import network; print(network.build('dcgan', size=64)['G'])"
"""
import functools
import inspect
import warnings
from dataclasses import dataclass, field
from types import SimpleNamespace

import runtime  # noqa: F401  (before Paddle: thread and MKL settings)
import numpy as np
import paddle
import paddle.nn as nn
import paddle.nn.functional as F
from paddle.nn.initializer import Constant, Normal

from facedata import to_uint8
from weightInit import dcgan_init, torch_default_init

# Paddle warns at the first BatchNorm forward in training mode that it tracks running statistics,
# which is what BatchNorm has always done; the message only confuses users.
warnings.filterwarnings("ignore", message="When training, we now always track global mean", category=UserWarning)


# The Paddle functions that the networks and the methods' maths call and that Paddle 3 builds only into its new (PIR)
# programs, not into the legacy programs of the static CPU step. They call them through an `ops` argument: Paddle's
# own by default, here; the static step passes faststep.LEGACY_OPS, the same ops of its legacy programs.
PADDLE_OPS = SimpleNamespace(tanh=paddle.tanh, sigmoid=F.sigmoid, sqrt=paddle.sqrt, rsqrt=paddle.rsqrt,
                             sign=paddle.sign, exp=paddle.exp, matmul=paddle.matmul, sum=paddle.sum)


class Tanh(nn.Layer):
    """tanh by `ops` (default PADDLE_OPS: Paddle's own, as nn.Tanh)."""

    def __init__(self, ops=None):
        super().__init__()
        self.ops = ops or PADDLE_OPS

    def forward(self, x):
        return self.ops.tanh(x)


def activation(name, ops=None):
    """The activation layer called `name`: relu, lrelu (slope 0.2, as DCGAN's D), tanh (by `ops`), or None."""
    layers = {"relu": nn.ReLU, "lrelu": lambda: nn.LeakyReLU(0.2), "tanh": lambda: Tanh(ops)}
    if name is None:
        return nn.Identity()
    return layers[name]()


def batch_norm(channels):
    """BatchNorm2D with PyTorch's defaults; Paddle's momentum=0.9 is PyTorch's momentum=0.1."""
    return nn.BatchNorm2D(num_features=channels, momentum=0.9, epsilon=1e-5)


def bias_per_channel(bias):
    """A [C] bias as [C, 1, 1], to be added to an N x C x H x W tensor after a convolution without one: the same
    numbers as the convolution's own bias, but Paddle 3.3's CPU add broadcasts a [C, 1, 1] operand 3-8x faster,
    forward and backward, than the [1, C, 1, 1] (eager) or [C] with axis=1 (static) one the convolution adds
    (PG-GAN's training step 1.4x faster, the Torch blog's 4%; tests/test_faststep.py checks the equality)."""
    return bias.reshape([-1, 1, 1])


# The forms a network with a faster way to compute can be built in (form=): the reference, which eager training
# uses and tests hold the others to; the static CPU step's; the export's. What each changes is the network's own.
FORMS = ("ref", "static", "export")


def check_form(form):
    """`form`, or ValueError naming the forms."""
    if form not in FORMS:
        raise ValueError(f"form {form!r} is not one of {', '.join(FORMS)}")
    return form


class ConvBlock(nn.Layer):
    """Convolution -> BatchNorm (optional) -> activation.

    The defaults (4x4, stride 2, padding 1) halve H and W; with `transposed=True` the same
    numbers double them, as G's upsampling step.
    """

    def __init__(self, in_ch, out_ch, kernel=4, stride=2, padding=1, norm=True, act="lrelu", transposed=False,
                 bias=False, upsampled_input=False, dense_input=False, ops=None):
        super().__init__()
        # dense_input: a transposed convolution (stride 1, padding 0) of a 1x1 input computed as the one matrix
        # product it is (DCGAN G's first layer in the static step's form); other inputs take the convolution
        self.dense_input = dense_input
        # upsampled_input: the block convolves the nearest x2 upsampling of its input, as one transposed convolution
        # of the input itself (conv_of_upsampled; stride 1, odd kernel, same padding): the Torch blog's fused form
        self.upsampled_input = upsampled_input
        conv = nn.Conv2DTranspose if transposed else nn.Conv2D
        self.kernel, self.stride, self.padding, self.transposed = kernel, stride, padding, transposed
        # No bias where BN follows (it would be cancelled); none at all in DCGAN, as in the reference.
        self.conv = conv(in_ch, out_ch, kernel, stride=stride, padding=padding, bias_attr=None if bias else False)
        self.norm = batch_norm(out_ch) if norm else nn.Identity()
        self.act = activation(act, ops)

    def forward(self, x):
        conv = self.conv
        if self.dense_input and list(x.shape[2:]) == [1, 1]:
            return self.act(self.norm(transposed_conv_of_pixels(conv.weight, x)))
        if self.upsampled_input:
            return self.act(self.norm(conv_of_upsampled(conv, x)))
        if conv.bias is None or isinstance(conv, nn.Conv2DTranspose):
            return self.act(self.norm(conv(x)))
        # conv's own forward, with the bias added by bias_per_channel
        y = F.conv2d(x, conv.weight, stride=self.stride, padding=self.padding)
        return self.act(self.norm(y + bias_per_channel(conv.bias)))


def transposed_conv_of_pixels(weight, x):
    """The stride-1, padding-0 transposed convolution with `weight` [in, out, k, k] of x [N, in, 1, 1]: x @ weight,
    [N, out, k, k]."""
    c_in, c_out, k, _ = weight.shape
    return paddle.mm(x.reshape([-1, c_in]), weight.reshape([c_in, c_out * k * k])).reshape([-1, c_out, k, k])


def up_block(in_ch, out_ch, **kwargs):
    """G's step: transposed conv -> BatchNorm -> ReLU, doubling H and W by default."""
    return ConvBlock(in_ch, out_ch, **{"act": "relu", **kwargs, "transposed": True})


# ----------------------------------------------------------------------------- DCGAN

def check_size(size, smallest=8):
    """Raise ValueError unless `size` is a power of two >= `smallest`."""
    if not isinstance(size, int) or size < smallest or size & (size - 1):
        raise ValueError(f"size must be a power of two >= {smallest}, got {size}")


def dcgan_channels(size, width):
    """{resolution: channels} for DCGAN's inner layers: `width` at size/2, doubling per halving.

    size 64, width 64 -> {32: 64, 16: 128, 8: 256, 4: 512}, the tutorial's ngf = ndf = 64.
    """
    check_size(size)
    return {res: width * size // (2 * res) for res in (2 ** k for k in range(2, size.bit_length() - 1))}


class DCGANGenerator(nn.Layer):
    """z -> 4x4 -> ... -> size x size RGB in [-1, 1]: transposed-conv blocks with BN and ReLU, tanh out."""

    def __init__(self, size=64, z_dim=100, width=64, form="ref", ops=None):
        super().__init__()
        self.args = dict(size=size, z_dim=z_dim, width=width)
        self.form = check_form(form)   # how it computes, not what: not in args; "static": first layer as a product
        ch = dcgan_channels(size, width)
        blocks = [up_block(z_dim, ch[4], stride=1, padding=0,                 # -> [N, ch[4], 4, 4]: 512 at 64/64
                           dense_input=form == "static")]
        res = 4
        while res < size // 2:
            blocks.append(up_block(ch[res], ch[2 * res]))                # -> [N, ch, 2res, 2res]
            res *= 2
        blocks.append(up_block(ch[res], 3, norm=False, act="tanh", ops=ops))   # -> [N, 3, size, size]
        self.main = nn.Sequential(*blocks)
        self.apply(dcgan_init)

    def forward(self, z):
        return self.main(z.reshape([-1, self.args["z_dim"], 1, 1]))


def down_blocks(size, width):
    """DCGAN's D body: strided conv blocks with LeakyReLU 0.2, no BN on the first, size x size RGB -> ch[4] x 4 x 4."""
    ch = dcgan_channels(size, width)
    res = size // 2
    blocks = [ConvBlock(3, ch[res], norm=False)]                          # -> [N, w, size/2, size/2]
    while res > 4:
        blocks.append(ConvBlock(ch[res], ch[res // 2]))                   # -> [N, ch, res/2, res/2]
        res //= 2
    return blocks


class DCGANDiscriminator(nn.Layer):
    """size x size RGB -> one logit: down_blocks, then a 4x4 convolution."""

    def __init__(self, size=64, z_dim=100, width=64):
        super().__init__()
        self.args = dict(size=size, z_dim=z_dim, width=width)
        last = dcgan_channels(size, width)[4]
        self.main = nn.Sequential(*down_blocks(size, width),
                                  nn.Conv2D(last, 1, 4, stride=1, padding=0, bias_attr=False))  # -> [N, 1, 1, 1]
        self.apply(dcgan_init)

    def forward(self, x):
        return self.main(x).flatten()                                     # -> [N] logits

    def features(self, x):
        """The output of the body's last convolution, before its BatchNorm: the VAE/GAN's learned similarity.

        Larsen et al.'s code measures reconstructions on a middle layer of D before its normalisation:
        its D's 3rd convolution at 32 px, the 4th at 64 px (recon_depth 6 and 9). Counted in this D that
        is its body's last, N x 4*width x 4 x 4 at 32 px (N x 8*width x 4 x 4 at 64).
        """
        *before, last = list(self.main)[:-1]
        for block in before:
            x = block(x)
        return last.conv(x)


# ----------------------------------------------------------------------------- the Torch blog's GAN

def upsample_block(in_ch, out_ch, kernel=5, fused=False):
    """Nearest-neighbour upsampling x2, then a same-size conv -> BatchNorm -> ReLU; `fused`: the upsampling and the
    convolution as one transposed convolution of the small image, the same numbers to float rounding with 2.8x fewer
    multiplications at 5x5 and no upsampled tensor (the structure, and so the state_dict, stays the same)."""
    return nn.Sequential(nn.Identity() if fused else nn.Upsample(scale_factor=2, mode="nearest"),
                         ConvBlock(in_ch, out_ch, kernel, stride=1, padding=kernel // 2, act="relu",
                                   upsampled_input=fused))


class FedDropout(nn.Layer):
    """Dropout (upscaled in training) in the static step's form: its input times a mask that `mask(shape, p)` gives,
    a program input that the step draws as Paddle's own dropout would (faststep.dropout_mask), so that a seeded run
    drops the same units on both steps. `channels`: one number per channel, as nn.Dropout2D."""

    def __init__(self, p, mask, channels=False):
        super().__init__()
        self.p, self.mask, self.channels = p, mask, channels

    def forward(self, x):
        if not self.training or self.p == 0:
            return x
        return x * self.mask(list(x.shape[:2]) + [1, 1] if self.channels else list(x.shape), self.p)


def dropout(p, channels=False, mask=None):
    """nn.Dropout (nn.Dropout2D with `channels`), or with `mask` its static form, FedDropout."""
    if mask is not None:
        return FedDropout(p, mask, channels)
    return nn.Dropout2D(p) if channels else nn.Dropout(p)


def pool_block(in_ch, out_ch, kernel=5, dropout_p=0.2, mask=None):
    """A same-size conv (with bias, no norm) -> 2x2 max-pool -> ReLU -> spatial dropout, halving H and W."""
    return nn.Sequential(ConvBlock(in_ch, out_ch, kernel, stride=1, padding=kernel // 2, norm=False, act=None,
                                   bias=True),
                         nn.MaxPool2D(2), activation("relu"), dropout(dropout_p, channels=True, mask=mask))


def torchblog_channels(width):
    """The blog's channel counts at width 64, scaled by width / 64 (at least 1 each)."""
    scale = lambda c: max(1, c * width // 64)  # noqa: E731
    return {"dense": scale(128), "G": [scale(256), scale(256), scale(128)], "D": [scale(32), scale(64), scale(96)],
            "hidden": scale(1024)}


class TorchBlogGenerator(nn.Layer):
    """The 2015 Torch blog's G: dense to 128 x S/8 x S/8, three upsample + 5x5 conv blocks, 3x3 conv, tanh.

    At size 64 and width 64: z -> 128x8x8 -> 256x16x16 -> 256x32x32 -> 128x64x64 -> 3x64x64.
    The tanh is ours: the blog's images were in [0, 1], ours are in [-1, 1].
    """

    def __init__(self, size=64, z_dim=100, width=64, form="ref", ops=None):
        super().__init__()
        check_size(size)
        self.args = dict(size=size, z_dim=z_dim, width=width)
        self.form = check_form(form)   # how it computes, not what: not in args; "static", "export": fused blocks
        ch = torchblog_channels(width)
        self.start = size // 8
        self.dense = nn.Linear(z_dim, ch["dense"] * self.start ** 2)
        chans = [ch["dense"]] + ch["G"]
        self.main = nn.Sequential(*[upsample_block(a, b, fused=form != "ref") for a, b in zip(chans, chans[1:])],
                                  ConvBlock(chans[-1], 3, 3, stride=1, padding=1, norm=False, act="tanh", bias=True,
                                            ops=ops))
        self.apply(dcgan_init)

    def forward(self, z):
        x = self.dense(z.reshape([-1, self.args["z_dim"]]))
        return self.main(x.reshape([-1, x.shape[1] // self.start ** 2, self.start, self.start]))


class TorchBlogDiscriminator(nn.Layer):
    """The blog's D: three 5x5 conv + max-pool + ReLU + spatial dropout 0.2 blocks, dense 1024, dropout 0.5, logit.

    At size 64 and width 64: 3x64x64 -> 32x32x32 -> 64x16x16 -> 96x8x8 -> 1024 -> 1. No BatchNorm.
    """

    def __init__(self, size=64, z_dim=100, width=64, mask=None):
        """`mask`: the static step's dropout masks (FedDropout); None for Paddle's own dropout."""
        super().__init__()
        check_size(size)
        self.args = dict(size=size, z_dim=z_dim, width=width)
        ch = torchblog_channels(width)
        chans = [3] + ch["D"]
        self.main = nn.Sequential(*[pool_block(a, b, mask=mask) for a, b in zip(chans, chans[1:])])
        self.head = nn.Sequential(nn.Linear(chans[-1] * (size // 8) ** 2, ch["hidden"]), activation("relu"),
                                  dropout(0.5, mask=mask), nn.Linear(ch["hidden"], 1))
        self.apply(dcgan_init)

    def forward(self, x):
        return self.head(self.main(x).flatten(1)).flatten()          # -> [N] logits


# ----------------------------------------------------------------------------- progressive growing (PG-GAN)

class EqualizedConv2D(nn.Layer):
    """Conv (stride 1, same padding) with equalized learning rate: weights N(0, 1), scaled at run time.

    The scale gain / sqrt(fan_in) is applied in every forward pass instead of at
    initialisation, so Adam's per-parameter step sizes treat every layer alike (Karras et al. 2018).
    """

    def __init__(self, in_ch, out_ch, kernel=3, gain=2 ** 0.5):
        super().__init__()
        self.scale = gain / (in_ch * kernel * kernel) ** 0.5
        self.padding = kernel // 2
        self.weight = self.create_parameter([out_ch, in_ch, kernel, kernel], default_initializer=Normal(0.0, 1.0))
        self.bias = self.create_parameter([out_ch], is_bias=True, default_initializer=Constant(0.0))

    def forward(self, x):
        return F.conv2d(x, self.weight * self.scale, padding=self.padding) + bias_per_channel(self.bias)


class EqualizedLinear(nn.Layer):
    """Dense layer with equalized learning rate (see EqualizedConv2D)."""

    def __init__(self, in_features, out_features, gain=2 ** 0.5, ops=None):
        super().__init__()
        self.ops = ops or PADDLE_OPS
        self.scale = gain / in_features ** 0.5
        self.weight = self.create_parameter([in_features, out_features], default_initializer=Normal(0.0, 1.0))
        self.bias = self.create_parameter([out_features], is_bias=True, default_initializer=Constant(0.0))

    def forward(self, x):
        return self.ops.matmul(x, self.weight * self.scale) + self.bias


def pixel_norm(x, eps=1e-8, ops=PADDLE_OPS):
    """Each pixel's feature vector scaled to unit root-mean-square over the channels (axis 1).

    The scale is expanded to x's shape before the product: Paddle 3.3's CPU multiply broadcasts a
    [N, 1, H, W] operand about 50x slower than it multiplies equal shapes (2.9 ms against 0.05 ms at
    [16, 16, 32, 32]), and the expand costs 0.08 ms. The same numbers, forward and backward, bit for bit.
    """
    return x * ops.rsqrt((x * x).mean(axis=1, keepdim=True) + eps).expand(x.shape)


def pixel_norm_by_conv(x, eps=1e-8, ops=PADDLE_OPS):
    """pixel_norm with the mean over channels of a 4-D x as a 1x1 convolution with weights 1/C: the same
    numbers to float rounding. Exported generators use it, where oneDNN runs the convolution and the mean
    would leave oneDNN's layout (PG-GAN's generation: 1.9x faster)."""
    if len(x.shape) != 4:   # (not a call of pixel_norm: the export puts this function in its place)
        return x * ops.rsqrt((x * x).mean(axis=1, keepdim=True) + eps)
    c = x.shape[1]
    return x * ops.rsqrt(F.conv2d(x * x, paddle.full([1, c, 1, 1], 1.0 / c)) + eps)


def vjp(y, x, g):
    """g times the derivative of y with respect to x, by autograd (eager or static), differentiable again."""
    if paddle.in_dynamic_mode():
        return paddle.grad(y, x, g, create_graph=True)[0]
    return paddle.static.gradients([y], [x], [g])[0]


def backward_through(tape, g, up=None, ops=PADDLE_OPS):
    """The gradient at the start of a pass recorded by PGGANDiscriminator.forward's `tape`, given `g` at its end;
    `up` is the D's form of nearest upsampling (the pooling's adjoint is a quarter of it; default: upsample)."""
    up = up or upsample
    extra = []
    for step in reversed(tape):
        kind = step[0]
        if kind == "layer":
            f = step[1]
            if isinstance(f, EqualizedLinear):
                g = ops.matmul(g, f.weight * f.scale, transpose_y=True)
            else:   # stride 1, same padding: the input's gradient is the convolution with the adjoint kernel
                g = F.conv2d(g, (f.weight * f.scale).flip([2, 3]).transpose([1, 0, 2, 3]), padding=f.padding)
        elif kind == "lrelu":   # autograd's own: Paddle's second derivative takes slope 0.2 at exactly 0, its first 1
            g = vjp(step[2], step[1], g)
        elif kind == "pool":   # 2x2 average pooling's adjoint: each gradient spread over its block, a quarter each
            g = up(g) * 0.25
        elif kind == "reshape":
            g = g.reshape(list(step[1]))
        elif kind == "stddev":
            g = minibatch_stddev_gradient(g, step[1], ops=ops)
        else:       # "fade": x = old + (x - old) * alpha, old computed from the same input by its own steps
            _, alpha, old_tape = step
            extra.append(backward_through(old_tape, g * (1.0 - alpha), up, ops))
            g = g * alpha
    for e in extra:
        g = g + e
    return g


def group_deviations(x, g, ops=PADDLE_OPS):
    """(each image's deviation from its group's mean, [G, M, C, H, W]; each feature's std over its group,
    [M, C, H, W]) for groups of `g` images: image i is in group i % M, as the official code's reshape."""
    n, c, h, w = x.shape
    y = x.reshape([g, -1, c, h, w])
    y = y - y.mean(axis=0, keepdim=True)
    return y, ops.sqrt((y * y).mean(axis=0) + 1e-8)


def minibatch_stddev_gradient(g, x, group=4, ops=PADDLE_OPS):
    """The gradient at x of sum(g * minibatch_stddev(x, group)), for backward_through.

    With y the group's deviations from its mean and std = sqrt(mean(y^2) + 1e-8), the extra channel's value s
    is std averaged over C x H x W; d s / d x = y / (group * std * C * H * W) (the mean's own term sums to 0).
    """
    n, c, h, w = x.shape
    gs = min(group, n)
    y, std = group_deviations(x, gs, ops)
    g_s = ops.sum(g[:, c:].reshape([gs, -1, h * w]), axis=[0, 2])      # [M]: each group's value's gradient
    through = y * (g_s.reshape([1, -1, 1, 1, 1]) / float(gs * c * h * w)) / std
    return g[:, :c] + through.reshape([n, c, h, w])


def minibatch_stddev(x, group=4, ops=PADDLE_OPS):
    """x with one more channel: the standard deviation over groups of `group` images, averaged to one value.

    As the official code: the batch is split into groups of min(group, N) images (N must be a
    multiple), each feature's std over a group is averaged over features and pixels, and that
    value fills the extra channel of the group's images.
    """
    n, c, h, w = x.shape
    g = min(group, n)
    _, std = group_deviations(x, g, ops)
    s = std.mean(axis=[1, 2, 3])                           # [M]
    s = paddle.tile(s.reshape([1, -1, 1, 1, 1]), [g, 1, 1, h, w]).reshape([n, 1, h, w])
    return paddle.concat([x, s], axis=1)


def upsample(x):
    """Nearest-neighbour upsampling x2."""
    return F.interpolate(x, scale_factor=2, mode="nearest")


def nearest_up2(x):
    """Nearest-neighbour upsampling x2 as a reshape and a broadcast: each pixel repeated in a 2x2 block.

    F.interpolate(x, scale_factor=2, mode="nearest") exactly (tests/test_faststep.py, forward and
    backward); its gradient is a sum over each 2x2 block, where nearest_interp's is a scatter. The static
    training step and the exported generators use it (Paddle Inference's oneDNN path cannot run
    nearest_interp); the eager networks keep `upsample`.
    """
    n, c, h, w = x.shape
    return x.reshape([n, c, h, 1, w, 1]).expand([n, c, h, 2, w, 2]).reshape([n, c, 2 * h, 2 * w])


def up_conv(conv, x):
    """conv(upsample(x)): PG-GAN's G doubles its resolution before the first convolution of a block."""
    return conv(upsample(x))


def upsampled_kernel(weight):
    """The kernel of one stride-2 transposed convolution (padding k // 2) that computes a stride-1 convolution with
    `weight` ([out, in, k, k], k odd, padding k // 2) of the nearest-upsampled input: [in, out, k + 1, k + 1].

    Each output pixel of a convolution on a nearest-upsampled image sees each input pixel through one or two
    adjacent taps; summing the zero-padded kernel's four shifted windows gives those sums, as the official PG-GAN's
    `upscale2d_conv2d` (tkarras/progressive_growing_of_gans, networks.py). Paddle's conv2d_transpose applies its
    kernel flipped against that code's, hence the flip. No upsampled tensor is made, and a 3x3 kernel costs 16
    instead of 36 multiplications per input pixel and weight (5x5: 36 instead of 100).
    """
    w = F.pad(weight, [1, 1, 1, 1])                                        # [out, in, k + 2, k + 2]
    w = w[:, :, 1:, 1:] + w[:, :, :-1, 1:] + w[:, :, 1:, :-1] + w[:, :, :-1, :-1]
    return w.flip([2, 3]).transpose([1, 0, 2, 3])


def convolution_of_upsampled(x, weight, bias):
    """The stride-1 convolution with `weight` (odd kernel k, padding k // 2) and `bias` of upsample(x), computed as
    one transposed convolution of x (see upsampled_kernel): the same numbers to float rounding."""
    return F.conv2d_transpose(x, upsampled_kernel(weight), bias, stride=2, padding=weight.shape[-1] // 2)


def up_conv_transposed(conv, x):
    """up_conv(conv, x) for PG-GAN's EqualizedConv2D, as one transposed convolution. Exported generators use it
    (PGGAN_FORMS["export"]); tests/test_faststep.py checks it against up_conv, forward and backward."""
    return convolution_of_upsampled(x, conv.weight * conv.scale, conv.bias)


def conv_of_upsampled(conv, x):
    """nn.Conv2D `conv` (stride 1, odd kernel, padding k // 2) applied to upsample(x), as one transposed convolution:
    ConvBlock(upsampled_input=True), the Torch blog's fused form."""
    return convolution_of_upsampled(x, conv.weight, conv.bias)


def downsample(x):
    """2x2 average pooling."""
    return F.avg_pool2d(x, 2)


def resampling_matrix(n, up):
    """[2n, n] with ones where row i takes column i // 2 (nearest doubling), or its transpose times 1/2, [n, 2n]
    (the mean of each pair of rows); a constant: no gradient flows into it."""
    m = np.kron(np.eye(n, dtype=np.float32), np.ones((2, 1), np.float32))
    m = paddle.assign(m if up else m.T * 0.5)
    m.stop_gradient = True
    return m


def upsample_by_products(x, ops=PADDLE_OPS):
    """upsample(x) as two matrix products, R @ x @ R^T with R = resampling_matrix(up=True): exactly the same
    numbers (each output is one input times 1, plus zeros); its gradient sums each 2x2 block in another order.
    Paddle 3.3's CPU nearest_interp and its gradient run at about a sixth of this speed (16 -> 32 px, 16 channels,
    batch 16: 3.0 against 0.5 ms forward + backward). PG-GAN's static step uses it (PGGAN_FORMS["static"])."""
    return _resample(x, True, ops)


def downsample_by_products(x, ops=PADDLE_OPS):
    """downsample(x) as two matrix products with halves, P @ x @ P^T: the same numbers to float rounding, about
    3x faster than Paddle 3.3's CPU avg_pool2d forward + backward. PG-GAN's static step uses it."""
    return _resample(x, False, ops)


def up_conv_by_products(conv, x, ops=PADDLE_OPS):
    """up_conv with upsample_by_products: the same numbers."""
    return conv(upsample_by_products(x, ops))


def _resample(x, up, ops=PADDLE_OPS):
    """R_h @ x @ R_w^T with resampling matrices for x's height and width (one matrix when they are equal)."""
    h, w = (n if up else n // 2 for n in x.shape[-2:])
    rows = resampling_matrix(h, up)
    cols = rows if w == h else resampling_matrix(w, up)
    return ops.matmul(ops.matmul(rows, x), cols, transpose_y=True)


# PG-GAN's resampling, pixel norm and upsampling convolution in each form its networks are built in (form=): the
# reference ("ref", eager training and the standard the tests hold the others to); the static CPU step's ("static":
# nearest upsampling and average pooling as matrix products, which MKL runs several times faster than Paddle's CPU
# kernels); the export's ("export": ops that Paddle Inference's oneDNN path runs, and each upsampling + convolution
# as one transposed convolution). Each computes the reference's numbers (tests/test_faststep.py, test_generator.py).
PGGAN_FORMS = {
    "ref": dict(upsample=upsample, downsample=downsample, pixel_norm=pixel_norm, up_conv=up_conv),
    "static": dict(upsample=upsample_by_products, downsample=downsample_by_products, pixel_norm=pixel_norm,
                   up_conv=up_conv_by_products),
    "export": dict(upsample=nearest_up2, downsample=downsample, pixel_norm=pixel_norm_by_conv,
                   up_conv=up_conv_transposed),
}


def pggan_forms(form, ops=None):
    """PGGAN_FORMS[form], its functions calling `ops` (default PADDLE_OPS); ValueError naming the forms."""
    ops = ops or PADDLE_OPS
    return {name: functools.partial(f, ops=ops) if "ops" in inspect.signature(f).parameters else f
            for name, f in PGGAN_FORMS[check_form(form)].items()}


class PGGANNetwork(nn.Layer):
    """What PG-GAN's G and D share: their arguments and channel table, their form (PGGAN_FORMS) and `ops`, and the
    stage they run at (`set_stage`)."""

    def __init__(self, size, z_dim, fmap_base, fmap_max, form, ops):
        super().__init__()
        self.args = dict(size=size, z_dim=z_dim, fmap_base=fmap_base, fmap_max=fmap_max)
        self.ops = ops or PADDLE_OPS
        self.form, self.forms = form, pggan_forms(form, self.ops)   # how it computes, not what: not in args
        self.nf = pggan_channels(size, fmap_base, fmap_max)
        self.res, self.alpha = size, 1.0

    def set_stage(self, res, alpha=1.0):
        if res not in self.nf:
            raise ValueError(f"resolution {res} is not one of {list(self.nf)}")
        self.res, self.alpha = res, float(alpha) if isinstance(alpha, (int, float)) else alpha   # or a program input


def fading(alpha):
    """Whether a stage of `alpha` blends in the previous resolution: alpha below 1, or a tensor (the static
    training step feeds alpha to its program, progressive.iteration)."""
    return not isinstance(alpha, (int, float)) or alpha < 1.0


def pggan_channels(size, fmap_base, fmap_max):
    """{resolution: channels} from 4 to `size`, as the official code: nf(stage) = min(fmap_base / 2^stage, fmap_max)
    with 4x4 at stage 1, that is nf(res) = min(2 fmap_base / res, fmap_max).

    The paper's 8192 and 512 give 512 channels up to 32x32, then 256, 128, ... 16 at 1024.
    """
    check_size(size, smallest=4)
    return {r: max(1, min(2 * fmap_base // r, fmap_max)) for r in (2 ** k for k in range(2, size.bit_length()))}


class PGGANGenerator(PGGANNetwork):
    """Progressive G: z pixel-normed -> dense 4x4 -> conv3x3, then per resolution upsample, conv3x3 x 2.

    LeakyReLU 0.2 and pixel norm after every conv, a 1x1 to-RGB per resolution (linear output,
    as the official code). `set_stage(res, alpha)` picks the resolution it draws at; during a
    fade (alpha < 1) the output is lerp(upsample(to_rgb_old(prev)), to_rgb_new(new), alpha).
    """

    def __init__(self, size=32, z_dim=512, fmap_base=256, fmap_max=64, form="ref", ops=None):
        super().__init__(size, z_dim, fmap_base, fmap_max, form, ops)
        nf4 = self.nf[4]
        self.dense = EqualizedLinear(z_dim, nf4 * 16, gain=2 ** 0.5 / 4, ops=ops)  # the official gain for this layer
        self.blocks = nn.LayerDict({"4": EqualizedConv2D(nf4, nf4)})
        self.to_rgb = nn.LayerDict({"4": EqualizedConv2D(nf4, 3, kernel=1, gain=1.0)})
        for r in list(self.nf)[1:]:
            self.blocks[str(r)] = nn.LayerList([EqualizedConv2D(self.nf[r // 2], self.nf[r]),
                                                EqualizedConv2D(self.nf[r], self.nf[r])])
            self.to_rgb[str(r)] = EqualizedConv2D(self.nf[r], 3, kernel=1, gain=1.0)

    def _act(self, x):
        return self.forms["pixel_norm"](F.leaky_relu(x, 0.2))

    def forward(self, z):
        x = self.dense(self.forms["pixel_norm"](z.reshape([-1, self.args["z_dim"]])))
        x = self._act(x.reshape([-1, self.nf[4], 4, 4]))
        x = self._act(self.blocks["4"](x))
        prev = None
        r = 4
        while r < self.res:
            prev, r = x, 2 * r
            first, second = self.blocks[str(r)]
            x = self._act(second(self._act(self.forms["up_conv"](first, x))))
        rgb = self.to_rgb[str(r)](x)
        if fading(self.alpha) and prev is not None:
            old = self.forms["upsample"](self.to_rgb[str(r // 2)](prev))
            rgb = old + (rgb - old) * self.alpha
        return rgb


class PGGANDiscriminator(PGGANNetwork):
    """Progressive D mirroring G: 1x1 from-RGB, per resolution conv3x3 x 2 + average pool, and at 4x4
    minibatch stddev, conv3x3, dense, dense -> 1 (gain 1). During a fade its input side mirrors
    G's: lerp(from_rgb_old(avgpool(x)), block(from_rgb_new(x)), alpha).
    """

    def __init__(self, size=32, z_dim=512, fmap_base=256, fmap_max=64, form="ref", ops=None):
        super().__init__(size, z_dim, fmap_base, fmap_max, form, ops)
        nf4 = self.nf[4]
        self.from_rgb = nn.LayerDict({str(r): EqualizedConv2D(3, self.nf[r], kernel=1) for r in self.nf})
        self.blocks = nn.LayerDict({str(r): nn.LayerList([EqualizedConv2D(self.nf[r], self.nf[r]),
                                                          EqualizedConv2D(self.nf[r], self.nf[r // 2])])
                                    for r in list(self.nf)[1:]})
        self.final_conv = EqualizedConv2D(nf4 + 1, nf4)
        self.dense = EqualizedLinear(nf4 * 16, nf4, ops=ops)
        self.out = EqualizedLinear(nf4, 1, gain=1.0, ops=ops)

    def forward(self, img, tape=None):
        """[N] scores (WGAN: not logits). `tape`, a list, receives each step of the pass for input_gradient."""
        record = tape.append if tape is not None else (lambda step: None)

        def layer(f, x, rec=record):          # an equalized convolution or dense layer
            rec(("layer", f))
            return f(x)

        def act(x, rec=record):
            y = F.leaky_relu(x, 0.2)
            rec(("lrelu", x, y))
            return y

        def pool(x, rec=record):
            rec(("pool",))
            return self.forms["downsample"](x)

        r = img.shape[-1]
        x = act(layer(self.from_rgb[str(r)], img))
        while r > 4:
            for conv in self.blocks[str(r)]:
                x = act(layer(conv, x))
            x = pool(x)
            if r == self.res and fading(self.alpha):
                old_tape = []
                old = act(layer(self.from_rgb[str(r // 2)], pool(img, old_tape.append), old_tape.append),
                          old_tape.append)
                record(("fade", self.alpha, old_tape))
                x = old + (x - old) * self.alpha
            r //= 2
        record(("stddev", x))
        x = act(layer(self.final_conv, minibatch_stddev(x, ops=self.ops)))
        record(("reshape", x.shape))
        x = act(layer(self.dense, x.reshape([x.shape[0], -1])))  # reshape: flatten has no second derivative
        return layer(self.out, x).reshape([-1])                  # -> [N]

    def input_gradient(self, img):
        """The gradient of the sum of D(img) with respect to img, written out with first-order ops: convolutions
        with the flipped, transposed kernels, leaky ReLU's slopes, pooling's spread, the minibatch stddev's
        derivative. It equals paddle.grad(D(img).sum(), img) to float rounding (tests/test_faststep.py), and a
        gradient of it (WGAN-GP's penalty) then needs no second derivatives: Paddle 3.3 has no oneDNN kernel
        for conv2d_grad_grad, which was the largest op of PG-GAN's static step (progressive.input_gradient).
        """
        tape = []
        self.forward(img, tape)
        return backward_through(tape, paddle.ones([img.shape[0], 1]), self.forms["upsample"], self.ops)


# ----------------------------------------------------------------------------- the Torch blog's VAE

class ConvEncoder(nn.Layer):
    """x -> the mean and log-variance of z: DCGAN's D body (strided conv blocks down to 4x4), then a dense layer.

    `forward` returns (mean, log-variance), each N x z_dim. The VAE's decoder is a DCGAN generator.
    """

    def __init__(self, size=64, z_dim=100, width=64):
        super().__init__()
        self.args = dict(size=size, z_dim=z_dim, width=width)
        self.main = nn.Sequential(*down_blocks(size, width))                             # -> [N, ch[4], 4, 4]
        self.head = nn.Linear(dcgan_channels(size, width)[4] * 16, 2 * z_dim)          # -> [N, 2 z]: mean, logvar
        self.apply(dcgan_init)

    def forward(self, x):
        out = self.head(self.main(x).reshape([x.shape[0], -1]))
        return out[:, :self.args["z_dim"]], out[:, self.args["z_dim"]:]


# ----------------------------------------------------------------------------- "Make Your Own GAN", part IV

# The series' LeakyReLU slope in its MLP networks: 0.02 (its notebooks' nn.LeakyReLU(0.02)).
MLP_SLOPE = 0.02


class MLPGenerator(nn.Layer):
    """The series' first face G, one hidden layer: z -> 300 -> LeakyReLU -> LayerNorm -> 3 x S x S.

    Its sigmoid output in [0, 1] is mapped to the project's [-1, 1] as 2 * sigmoid - 1. Any
    size; PyTorch's default initialisation, as the series' code.
    """

    def __init__(self, size=32, z_dim=100, hidden=300, ops=None):
        super().__init__()
        self.args = dict(size=size, z_dim=z_dim)
        self.ops = ops or PADDLE_OPS
        self.main = nn.Sequential(nn.Linear(z_dim, hidden), nn.LeakyReLU(MLP_SLOPE), nn.LayerNorm(hidden),
                                  nn.Linear(hidden, 3 * size * size))                  # -> [N, 3 S S]
        self.apply(torch_default_init)

    def forward(self, z):
        s = self.args["size"]
        return self.ops.sigmoid(self.main(z.reshape([-1, self.args["z_dim"]]))).reshape([-1, 3, s, s]) * 2 - 1


class MLPDiscriminator(nn.Layer):
    """The series' first face D: flatten -> 100 -> LeakyReLU -> LayerNorm -> one logit (its sigmoid is in the loss)."""

    def __init__(self, size=32, z_dim=100, hidden=100):
        super().__init__()
        self.args = dict(size=size, z_dim=z_dim)
        self.main = nn.Sequential(nn.Linear(3 * size * size, hidden), nn.LeakyReLU(MLP_SLOPE), nn.LayerNorm(hidden),
                                  nn.Linear(hidden, 1))
        self.apply(torch_default_init)

    def forward(self, x):
        return self.main(x.reshape([x.shape[0], -1])).reshape([-1])                  # -> [N] logits


def conv128_block(in_ch, out_ch, norm=True, transposed=False, padding=0):
    """The series' 8x8 stride-2 (transposed) convolution, no bias -> BatchNorm (optional) -> LeakyReLU 0.2."""
    return ConvBlock(in_ch, out_ch, kernel=8, stride=2, padding=padding, norm=norm, transposed=transposed)


class Conv128Generator(nn.Layer):
    """The series' convolutional G for 128x128 crops, layer for layer:
    z -> dense 3x28x28 -> LeakyReLU -> 256x62x62 -> 3x128x128 -> BatchNorm -> LeakyReLU -> tanh."""

    def __init__(self, size=128, z_dim=100, ops=None):
        super().__init__()
        self.args = dict(size=size, z_dim=z_dim)
        self.dense = nn.Sequential(nn.Linear(z_dim, 3 * 28 * 28), nn.LeakyReLU(0.2))
        self.main = nn.Sequential(conv128_block(3, 256, transposed=True),              # -> [N, 256, 62, 62]
                                  conv128_block(256, 3, transposed=True, padding=1),   # -> [N, 3, 128, 128]
                                  activation("tanh", ops))
        self.apply(torch_default_init)

    def forward(self, z):
        return self.main(self.dense(z.reshape([-1, self.args["z_dim"]])).reshape([-1, 3, 28, 28]))


class Conv128Discriminator(nn.Layer):
    """The series' convolutional D: three 8x8 stride-2 convolutions with spatial dropout 0.3, 3x10x10 -> one logit."""

    def __init__(self, size=128, z_dim=100, mask=None):
        """`mask`: the static step's dropout masks (FedDropout); None for Paddle's own dropout."""
        super().__init__()
        self.args = dict(size=size, z_dim=z_dim)
        drop = functools.partial(dropout, 0.3, channels=True, mask=mask)
        self.main = nn.Sequential(conv128_block(3, 256), drop(),              # -> [N, 256, 61, 61]
                                  conv128_block(256, 256), drop(),            # -> [N, 256, 27, 27]
                                  conv128_block(256, 3, norm=False), drop())  # -> [N, 3, 10, 10]
        self.head = nn.Linear(3 * 10 * 10, 1)
        self.apply(torch_default_init)

    def forward(self, x):
        return self.head(self.main(x).reshape([x.shape[0], -1])).reshape([-1])      # -> [N] logits


# ----------------------------------------------------------------------------- registry

def power_of_two_size(size, smallest=8):
    """Why these networks cannot be built at `size`, or None: DCGAN-like sizes, powers of two >= `smallest`."""
    try:
        check_size(size, smallest)
    except ValueError as e:
        return str(e)
    return None

@dataclass(frozen=True)
class Architecture:
    """An architecture as data: what train.py, generator.py and evaluate.py need to know of it."""
    networks: dict             # role -> class; "G" maps z to faces, "D" scores images
    args: tuple                # constructor arguments, from the training config (size: the data's)
    method: str                # its training method, a key of train.METHODS
    static_step: bool = False  # faststep.py builds its iteration as a static oneDNN program
    inference: bool = False    # Paddle Inference runs its G (generator.py's CPU path)
    size_problem: object = power_of_two_size   # size -> why it cannot be built at that size, or None
    defaults: dict = field(default_factory=dict)   # its own values for settings its method would choose
    builtin: dict = field(default_factory=dict)    # its small-data recipe (train.small_data), measured on the
    #                                                built-in faces
    # Why truncation (z scaled towards the average, 0) cannot work on its G, or None where it can
    truncation_problem: str = None


ARCHITECTURES = {
    # on the built-in faces: ADA, G's moving average, LeCam 0.1 and 12,800 images per epoch scored best of the
    # recipes tried, median of 3 seeds (README, "Augmentation, LeCam and G's average"; benchmarks/recipes.py)
    "dcgan": Architecture({"G": DCGANGenerator, "D": DCGANDiscriminator}, ("size", "z_dim", "width"), "bce",
                          static_step=True, inference=True,
                          builtin=dict(augment="ada", ema=True, lecam=0.1, epoch_images=12800)),
    "torchblog": Architecture({"G": TorchBlogGenerator, "D": TorchBlogDiscriminator}, ("size", "z_dim", "width"),
                              "bce", static_step=True, inference=True),
    "pggan": Architecture({"G": PGGANGenerator, "D": PGGANDiscriminator}, ("size", "z_dim", "fmap_base", "fmap_max"),
                          "progressive", static_step=True, inference=True,
                          truncation_problem="its G normalises z to unit length first (pixel norm), so a scaled z "
                                             "draws the same face",
                          size_problem=lambda size: power_of_two_size(size, smallest=4)),
    # the Torch blog's "going further": a VAE whose decoder is the DCGAN generator
    "vae": Architecture({"E": ConvEncoder, "G": DCGANGenerator}, ("size", "z_dim", "width"), "vae", static_step=True,
                        inference=True),
    # its VAE/GAN (Larsen et al. 2016): the same encoder and decoder, and the DCGAN D, whose features
    # measure the reconstructions
    "vaegan": Architecture({"E": ConvEncoder, "G": DCGANGenerator, "D": DCGANDiscriminator}, ("size", "z_dim", "width"),
                           "vaegan", static_step=True, inference=True),
    # "Make Your Own GAN", part IV: Adam lr 1e-4 with PyTorch's betas, one D and one G update per step;
    # the MLP also one image per update, as the series trains it (at 64 per batch, 800 updates are noise); no static
    # step: at one image per update it ran 1.1x the eager step's speed, below the 1.3x a second path must earn
    "mlp": Architecture({"G": MLPGenerator, "D": MLPDiscriminator}, ("size", "z_dim"), "bce", inference=True,
                        size_problem=lambda size: None if size >= 1 else f"size must be positive, got {size}",
                        defaults=dict(lr=1e-4, beta1=0.9, g_steps=1, batch_size=1)),
    "conv128": Architecture({"G": Conv128Generator, "D": Conv128Discriminator}, ("size", "z_dim"), "bce",
                            static_step=True, inference=True,
                            size_problem=lambda size: None if size == 128 else
                            f"its layers fit 128x128 images only, not {size}x{size}",
                            defaults=dict(lr=1e-4, beta1=0.9, g_steps=1)),
}


def architecture(name):
    """The registry entry of `name`; ValueError naming the known ones."""
    if name not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {name!r}; choose one of {', '.join(ARCHITECTURES)}")
    return ARCHITECTURES[name]


def build(name, form=None, mask=None, ops=None, **args):
    """{role: network} of architecture `name` built with `args`, freshly initialised, in the entry's order. The
    static step and the export also say how they compute, to the networks whose constructors take it: `form`
    ("static", "export"; PGGAN_FORMS, the DCGAN and Torch blog generators), `mask` (FedDropout's masks) and `ops`
    (PADDLE_OPS' functions as the static program builds them)."""
    return {role: _made(net, args, form=form, mask=mask, ops=ops) for role, net in architecture(name).networks.items()}


def build_net(name, role, args, form=None, mask=None, ops=None):
    """One network of architecture `name` (its `role`, as "G"), as a checkpoint stores it: arguments only (and how
    it computes, as build's)."""
    return _made(architecture(name).networks[role], args, form=form, mask=mask, ops=ops)


def _made(cls, args, **how):
    """cls(**args), given those of `how` that are set and that its constructor takes."""
    takes = inspect.signature(cls.__init__).parameters
    return cls(**args, **{k: v for k, v in how.items() if v is not None and k in takes})


def sample(net, z):
    """`net`'s faces for the noise `z`, as uint8 N x H x W x 3, with BatchNorm in inference mode."""
    was_training = net.training
    net.eval()
    with paddle.no_grad():
        images = to_uint8(net(paddle.to_tensor(z)).numpy())
    if was_training:
        net.train()
    return images


def count_parameters(net):
    """Number of scalar parameters of `net`."""
    return sum(int(paddle.numel(p)) for p in net.parameters())
