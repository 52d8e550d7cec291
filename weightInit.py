"""The tutorial's weight initialisation, applied to any network with `net.apply(dcgan_init)`.

Convolution, transposed-convolution and linear weights ~ N(0, 0.02); BatchNorm weights
~ N(1, 0.02) and biases 0 (Radford et al. 2016). Parameters are set in place through
Paddle's global generator (seed it with paddle.seed) and never named, so any number of
models can live in one process.

Example:
    python -c "import network, weightInit; G = network.DCGANGenerator(); G.apply(weightInit.dcgan_init)"
"""
import runtime  # noqa: F401  (before Paddle: thread and MKL settings)
import paddle
import paddle.nn as nn
from paddle.nn.initializer import Constant, Normal, Uniform

CONV_STD = 0.02

_WEIGHTED = (nn.Conv2D, nn.Conv2DTranspose, nn.Linear)
_NORMS = (nn.BatchNorm2D, nn.BatchNorm1D)


def torch_default_init(layer):
    """Initialise one layer as PyTorch does by default, for networks ported "as the post" from PyTorch code.

    Convolution, transposed-convolution and linear weights and biases ~ U(-1/sqrt(fan_in), 1/sqrt(fan_in))
    (PyTorch's kaiming_uniform with a = sqrt(5); for a transposed convolution, fan_in counts the
    weight's second axis, as PyTorch's does); norms: weight 1, bias 0.
    """
    if not paddle.in_dynamic_mode():
        return
    if isinstance(layer, _WEIGHTED):
        shape = layer.weight.shape
        fan_in = shape[0] if isinstance(layer, nn.Linear) else shape[1] * shape[2] * shape[3]
        bound = 1.0 / fan_in ** 0.5
        Uniform(-bound, bound)(layer.weight)
        if layer.bias is not None:
            Uniform(-bound, bound)(layer.bias)
    elif isinstance(layer, _NORMS + (nn.LayerNorm,)):
        Constant(1.0)(layer.weight)
        Constant(0.0)(layer.bias)


def dcgan_init(layer):
    """Initialise one layer as DCGAN does; pass to `Layer.apply`, which visits every sublayer.

    In static mode it does nothing: there an initializer would add ops to the program being
    built, and faststep's static copies take their weights from the dygraph networks.
    """
    if not paddle.in_dynamic_mode():
        return
    if isinstance(layer, _WEIGHTED):
        Normal(0.0, CONV_STD)(layer.weight)
        if layer.bias is not None:
            Constant(0.0)(layer.bias)
    elif isinstance(layer, _NORMS):
        Normal(1.0, CONV_STD)(layer.weight)
        Constant(0.0)(layer.bias)
