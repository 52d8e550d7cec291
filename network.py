"""Building blocks and the networks composed from them.

Blocks: ConvBlock (conv or transposed conv -> norm -> activation): D's downsampling step,
and G's upsampling step through `up_block`. Networks are short compositions of them; each
keeps its constructor arguments in `.args`, so a checkpoint can rebuild it with
`build_generator(name, args)`.

DCGAN (Radford et al. 2016, the tutorial's networks): G maps z (N x z_dim) to N x 3 x S x S
in [-1, 1]; D maps N x 3 x S x S to N logits. S is any power of two from 8 up: the
tutorial's 64, or 32 and 128 by removing or adding one block per side.

torchblog (the 2015 Torch blog "Generating Faces with Torch"): G upsamples with nearest
neighbours and 5x5 convolutions (upsample_block), D max-pools with dropout and no BatchNorm
(pool_block); the same interface as DCGAN.

Example:
    python -c "import network; G, D = network.build('dcgan', size=64); print(G)"
"""
import warnings

import runtime  # noqa: F401  (before Paddle: thread and MKL settings)
import paddle
import paddle.nn as nn

from weightInit import dcgan_init

# Paddle warns at the first BatchNorm forward in training mode that it tracks running statistics,
# which is what BatchNorm has always done; the message only confuses users.
warnings.filterwarnings("ignore", message="When training, we now always track global mean", category=UserWarning)


def activation(name):
    """The activation layer called `name`: relu, lrelu (slope 0.2, as DCGAN's D), tanh, or None."""
    layers = {"relu": nn.ReLU, "lrelu": lambda: nn.LeakyReLU(0.2), "tanh": nn.Tanh}
    if name is None:
        return nn.Identity()
    return layers[name]()


def batch_norm(channels):
    """BatchNorm2D with PyTorch's defaults; Paddle's momentum=0.9 is PyTorch's momentum=0.1."""
    return nn.BatchNorm2D(num_features=channels, momentum=0.9, epsilon=1e-5)


class ConvBlock(nn.Layer):
    """Convolution -> BatchNorm (optional) -> activation.

    The defaults (4x4, stride 2, padding 1) halve H and W; with `transposed=True` the same
    numbers double them, as G's upsampling step.
    """

    def __init__(self, in_ch, out_ch, kernel=4, stride=2, padding=1, norm=True, act="lrelu", transposed=False,
                 bias=False):
        super().__init__()
        conv = nn.Conv2DTranspose if transposed else nn.Conv2D
        # No bias where BN follows (it would be cancelled); none at all in DCGAN, as in the reference.
        self.conv = conv(in_ch, out_ch, kernel, stride=stride, padding=padding, bias_attr=None if bias else False)
        self.norm = batch_norm(out_ch) if norm else nn.Identity()
        self.act = activation(act)

    def forward(self, x):
        return self.act(self.norm(self.conv(x)))


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

    def __init__(self, size=64, z_dim=100, width=64):
        super().__init__()
        self.args = dict(size=size, z_dim=z_dim, width=width)
        ch = dcgan_channels(size, width)
        blocks = [up_block(z_dim, ch[4], stride=1, padding=0)]           # -> [N, ch[4], 4, 4]: 512 channels at 64/64
        res = 4
        while res < size // 2:
            blocks.append(up_block(ch[res], ch[2 * res]))                # -> [N, ch, 2res, 2res]
            res *= 2
        blocks.append(up_block(ch[res], 3, norm=False, act="tanh"))     # -> [N, 3, size, size]
        self.main = nn.Sequential(*blocks)
        self.apply(dcgan_init)

    def forward(self, z):
        return self.main(z.reshape([-1, self.args["z_dim"], 1, 1]))


class DCGANDiscriminator(nn.Layer):
    """size x size RGB -> one logit: strided conv blocks with LeakyReLU 0.2, no BN on the first."""

    def __init__(self, size=64, z_dim=100, width=64):
        super().__init__()
        self.args = dict(size=size, z_dim=z_dim, width=width)
        ch = dcgan_channels(size, width)
        res = size // 2
        blocks = [ConvBlock(3, ch[res], norm=False)]                      # -> [N, w, size/2, size/2]
        while res > 4:
            blocks.append(ConvBlock(ch[res], ch[res // 2]))               # -> [N, ch, res/2, res/2]
            res //= 2
        blocks.append(nn.Conv2D(ch[4], 1, 4, stride=1, padding=0, bias_attr=False))  # -> [N, 1, 1, 1]
        self.main = nn.Sequential(*blocks)
        self.apply(dcgan_init)

    def forward(self, x):
        return self.main(x).flatten()                                     # -> [N] logits


# ----------------------------------------------------------------------------- the Torch blog's GAN

def upsample_block(in_ch, out_ch, kernel=5):
    """Nearest-neighbour upsampling x2, then a same-size conv -> BatchNorm -> ReLU."""
    return nn.Sequential(nn.Upsample(scale_factor=2, mode="nearest"),
                         ConvBlock(in_ch, out_ch, kernel, stride=1, padding=kernel // 2, act="relu"))


def pool_block(in_ch, out_ch, kernel=5, dropout=0.2):
    """A same-size conv (with bias, no norm) -> 2x2 max-pool -> ReLU -> spatial dropout, halving H and W."""
    return nn.Sequential(ConvBlock(in_ch, out_ch, kernel, stride=1, padding=kernel // 2, norm=False, act=None,
                                   bias=True),
                         nn.MaxPool2D(2), activation("relu"), nn.Dropout2D(dropout))


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

    def __init__(self, size=64, z_dim=100, width=64):
        super().__init__()
        check_size(size)
        self.args = dict(size=size, z_dim=z_dim, width=width)
        ch = torchblog_channels(width)
        self.start = size // 8
        self.dense = nn.Linear(z_dim, ch["dense"] * self.start ** 2)
        chans = [ch["dense"]] + ch["G"]
        self.main = nn.Sequential(*[upsample_block(a, b) for a, b in zip(chans, chans[1:])],
                                  ConvBlock(chans[-1], 3, 3, stride=1, padding=1, norm=False, act="tanh", bias=True))
        self.apply(dcgan_init)

    def forward(self, z):
        x = self.dense(z.reshape([-1, self.args["z_dim"]]))
        return self.main(x.reshape([-1, x.shape[1] // self.start ** 2, self.start, self.start]))


class TorchBlogDiscriminator(nn.Layer):
    """The blog's D: three 5x5 conv + max-pool + ReLU + spatial dropout 0.2 blocks, dense 1024, dropout 0.5, logit.

    At size 64 and width 64: 3x64x64 -> 32x32x32 -> 64x16x16 -> 96x8x8 -> 1024 -> 1. No BatchNorm.
    """

    def __init__(self, size=64, z_dim=100, width=64):
        super().__init__()
        check_size(size)
        self.args = dict(size=size, z_dim=z_dim, width=width)
        ch = torchblog_channels(width)
        chans = [3] + ch["D"]
        self.main = nn.Sequential(*[pool_block(a, b) for a, b in zip(chans, chans[1:])])
        self.head = nn.Sequential(nn.Linear(chans[-1] * (size // 8) ** 2, ch["hidden"]), activation("relu"),
                                  nn.Dropout(0.5), nn.Linear(ch["hidden"], 1))
        self.apply(dcgan_init)

    def forward(self, x):
        return self.head(self.main(x).flatten(1)).flatten()          # -> [N] logits


# ----------------------------------------------------------------------------- registry

ARCHITECTURES = {
    "dcgan": (DCGANGenerator, DCGANDiscriminator),
    "torchblog": (TorchBlogGenerator, TorchBlogDiscriminator),
}


def build(name, **args):
    """(G, D) of architecture `name` built with `args`; freshly initialised."""
    if name not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {name!r}; choose one of {', '.join(ARCHITECTURES)}")
    G, D = ARCHITECTURES[name]
    return G(**args), D(**args)


def build_generator(name, args):
    """G alone, as stored in a checkpoint: its architecture name and arguments."""
    if name not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {name!r}; choose one of {', '.join(ARCHITECTURES)}")
    return ARCHITECTURES[name][0](**args)


def count_parameters(net):
    """Number of scalar parameters of `net`."""
    return sum(int(paddle.numel(p)) for p in net.parameters())
