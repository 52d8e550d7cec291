"""The CPU training step: methods.bce_iteration as one static program with oneDNN convolutions.

Paddle's eager mode runs every convolution through im2col + MKL GEMM one sample at a time
and never uses oneDNN, which is what makes a CPU DCGAN step slow. This module builds the
same iteration as methods.bce_iteration (D update on a real and a fake batch, then the G
updates, the first reusing the D update's fakes) as a legacy static program, and marks its
conv2d ops and their gradients to run on oneDNN (oneDNN has no transposed-conv gradient, and
its batch_norm_grad fails in these programs). G's first layer, a transposed convolution of a
1x1 input, runs as the one matrix product it is (Paddle's kernel does a matrix-vector product
per sample), with the same parameter. Measured alternatives are in benchmarks/README.md.

Any architecture whose ops the program can carry gets the step from `lower`, which rewrites the
layers that have no static form or no fast kernel: nearest upsampling becomes a reshape and a
broadcast, and dropout multiplies by a mask that the step draws from Paddle's generator before
each run and feeds in, the numbers eager dropout would draw (so a seeded run drops the same
units on both paths). Each rewrite is tested against the layer it replaces, forward and backward.

The weights, BatchNorm statistics and Adam moments live in this step's own scope while it
trains; `load` copies them in from the dygraph networks and optimizers, `store` copies them
back (before samples, evaluation and checkpoints), so everything else in the project keeps
using the dygraph objects. Noise comes from paddle.randn in the same order as the dygraph
step, so a seeded run draws the same numbers on both paths. Losses and weights agree with
the dygraph step to float tolerance (tests/test_faststep.py).

Example:
    step = FastStep("dcgan", G.args, batch=128, lr=2e-4, beta1=0.5, beta2=0.999)
    step.load(G, D, opt_G, opt_D)
    stats = step(real_batch)            # {'loss_D', 'D_real', 'D_fake', 'err_R', 'err_F', 'loss_G', 'G_check', 'D_check'}
    step.store(G, D, opt_G, opt_D)
"""
import functools
import types

import runtime  # noqa: F401  (before Paddle: thread and MKL settings)
import numpy as np
import paddle
import paddle.nn as nn
import paddle.nn.functional as F
from paddle.base.layer_helper import LayerHelper

import checkpoint
import network
from balance import lecam_term


ONEDNN_OPS = ("conv2d", "conv2d_grad")  # oneDNN's batch_norm_grad and conv2d_transpose fail in these programs


# ----------------------------------------------------------------------------- rewrites

def _dense_forward(self, x):
    """A transposed conv of a 1x1 input with padding 0 and stride 1 is one product: x @ weight."""
    if list(x.shape[2:]) != [1, 1]:
        return nn.Conv2DTranspose.forward(self, x)
    c_in, c_out, k, _ = self.weight.shape
    return paddle.mm(x.reshape([-1, c_in]), self.weight.reshape([c_in, c_out * k * k])).reshape([-1, c_out, k, k])


def unary(op_type, x):
    """A legacy static op of one input, X -> Out: Paddle 3's tanh, sigmoid and matmul build only PIR programs."""
    helper = LayerHelper(op_type)
    out = helper.create_variable_for_type_inference(x.dtype)
    helper.append_op(type=op_type, inputs={"X": x}, outputs={"Out": out})
    return out


def _tanh_forward(self, x):
    return unary("tanh", x)


def nearest_up2(x):
    """Nearest-neighbour upsampling x2 as a reshape and a broadcast: each pixel repeated in a 2x2 block.

    F.interpolate(x, scale_factor=2, mode="nearest") exactly (tests/test_faststep.py, forward and
    backward); its gradient is a sum over each 2x2 block, where nearest_interp's is a scatter.
    """
    n, c, h, w = x.shape
    return x.reshape([n, c, h, 1, w, 1]).expand([n, c, h, 2, w, 2]).reshape([n, c, 2 * h, 2 * w])


def _upsample_forward(self, x):
    return nearest_up2(x)


def dropout_mask(shape, p):
    """The scaled keep mask that Paddle's dropout draws for an input (or, for Dropout2D, a mask) of `shape`:
    uniform numbers from the global generator, kept where >= p, times 1 / (1 - p). Drawn in eager mode
    and fed to the program, so the static step drops what the eager step drops, from the same seed."""
    keep = (paddle.uniform(shape, min=0.0, max=1.0) >= p).numpy().astype(np.float32)
    return keep / (1.0 - p) if p < 1.0 else keep * 0.0


def mask_shape(layer, x):
    """The shape of the mask that dropout `layer` draws for `x`: one number per element, or per channel (2-D)."""
    if isinstance(layer, nn.Dropout2D):
        return [x.shape[0], x.shape[1], 1, 1]
    if layer.axis is not None:  # Dropout along chosen axes
        raise ValueError(f"no static rewrite of {layer!r}")
    return list(x.shape)


def lower(net, feed=None):
    """Rewrite `net`'s layers in place for the static program (see the module docstring).

    `feed(kind, shape, extra)` -> a static input: where a layer draws random numbers (dropout), the
    program takes them as an input that the step draws before each run, in the order the layers ask.
    """
    for layer in net.sublayers():
        if isinstance(layer, nn.Conv2DTranspose) and list(layer._stride) == [1, 1] and not np.any(layer._padding):
            layer.forward = types.MethodType(_dense_forward, layer)
        elif isinstance(layer, nn.Tanh):
            layer.forward = types.MethodType(_tanh_forward, layer)
        elif isinstance(layer, nn.Upsample) and layer.mode == "nearest" and layer.scale_factor in (2, 2.0, [2, 2]):
            layer.forward = types.MethodType(_upsample_forward, layer)
        elif isinstance(layer, (nn.Dropout, nn.Dropout2D)):
            if getattr(layer, "mode", "upscale_in_train") != "upscale_in_train":
                raise ValueError(f"no static rewrite of {layer!r}")
            layer.forward = types.MethodType(functools.partial(_dropout_forward, feed=feed), layer)


def _dropout_forward(self, x, feed):
    if not self.training or self.p == 0:
        return x
    return x * feed("mask", mask_shape(self, x), self.p)


def _bce(logits, target):
    return F.binary_cross_entropy_with_logits(logits, paddle.full_like(logits, target))


# ----------------------------------------------------------------------------- the step

class FastStep:
    """methods.bce_iteration for one architecture and batch size, as a static program on the CPU."""

    def __init__(self, arch, arch_args, batch, lr, beta1, beta2, d_steps=1, g_steps=2, augment=None, lecam=None):
        if not network.architecture(arch).static_step:
            raise ValueError(f"no static step for {arch!r} (its network.ARCHITECTURES entry says so)")
        # Run the ops one at a time (oneDNN and MKL use the cores themselves) and in the program's
        # order: Adam updates parameters in place, and without this the executor's own schedule let
        # a later forward read D's weights before their update from the second run on. Set here,
        # not at import: importing this module changes nothing.
        paddle.set_flags({"FLAGS_new_executor_serial_run": True, "FLAGS_new_executor_sequential_run": True})
        self.batch, self.z_dim = batch, arch_args["z_dim"]
        self.d_steps, self.g_steps = d_steps, g_steps
        self.augment = augment if augment is not None and augment.active else None
        self.lecam = lecam
        self.scope = paddle.static.Scope()
        self.place = paddle.CPUPlace()
        # Building draws a sample of T's numbers (for their shapes) and the startup's initializers draw
        # from the global generator: leave the training noise where the dygraph step would find it.
        rng = paddle.get_rng_state()
        size = arch_args["size"]
        self.shapes = {k: v.shape for k, v in self.augment.draw(batch, size).items()} if self.augment else {}
        with paddle.pir_utils.OldIrGuard():
            self.program, startup = paddle.static.Program(), paddle.static.Program()
            with paddle.static.program_guard(self.program, startup), paddle.utils.unique_name.guard():
                self._build(arch, arch_args, lr, beta1, beta2)
            for op in self.program.global_block().ops:
                if op.type in ONEDNN_OPS:
                    op._set_attr("use_mkldnn", True)
            self.executor = paddle.static.Executor(self.place)
            with paddle.static.scope_guard(self.scope):
                self.executor.run(startup)
        paddle.set_rng_state(rng)

    def _build(self, arch, arch_args, lr, beta1, beta2):
        nets = network.build(arch, **arch_args)   # weights come from `load`
        G, D = nets["G"], nets["D"]
        n, z_dim, size = self.batch, self.z_dim, G.args["size"]
        real = paddle.static.data("real", [n, 3, size, size], "float32")
        # Every random input in the order the dygraph step draws it: (kind, name or {key: name}, arguments)
        self.draws = []

        def feed(kind, shape, *extra):
            x = paddle.static.data(f"{kind}{len(self.draws)}", shape, "float32")
            self.draws.append((kind, x.name, (shape, *extra)))
            return x

        for net in (G, D):
            lower(net, feed)

        def noise():
            return feed("z", [n, z_dim])

        def T(x):
            if not self.augment:
                return x
            numbers = {k: paddle.static.data(f"T{len(self.draws)}_{k}", shape, "float32")
                       for k, shape in self.shapes.items()}
            self.draws.append(("T", {k: v.name for k, v in numbers.items()}, ()))
            return self.augment.apply(x, numbers)

        adam = dict(learning_rate=lr, beta1=beta1, beta2=beta2)
        opt_D = paddle.optimizer.Adam(parameters=D.parameters(), **adam)
        opt_G = paddle.optimizer.Adam(parameters=G.parameters(), **adam)
        d_names = {p.name for p in D.parameters()}
        if self.lecam:  # LeCam's averages before the iteration and the decay of its first update (0 at the start)
            ema_real, ema_fake, decay = (paddle.static.data(name, [1], "float32")
                                         for name in ("lecam_real", "lecam_fake", "lecam_decay"))

        fake = G(noise())
        for i in range(self.d_steps):
            more = fake if i == 0 else G(noise())
            logits_real, logits_fake = D(T(real)), D(T(more.detach()))
            err_real, err_fake = _bce(logits_real, 1.0), _bce(logits_fake, 0.0)
            loss_D = err_real + err_fake
            if self.lecam:  # balance.LeCam: the averages take the batch, then the term
                keep = decay if i == 0 else self.lecam.decay
                ema_real = keep * ema_real + (1 - keep) * logits_real.mean().detach()
                ema_fake = keep * ema_fake + (1 - keep) * logits_fake.mean().detach()
                reg = self.lecam.weight * lecam_term(logits_real, logits_fake, ema_real, ema_fake)
                opt_D.minimize(loss_D + reg, parameters=D.parameters())
            else:
                opt_D.minimize(loss_D, parameters=D.parameters())
        losses_G = []
        for i in range(self.g_steps):
            more = fake if i == 0 else G(noise())
            loss_G = _bce(D(T(more)), 1.0)
            opt_G.minimize(loss_G, parameters=G.parameters(), no_grad_set=d_names)
            losses_G.append(loss_G)
        # per network, the sum of its parameters' means after the updates: not finite once any parameter is not
        sums = [paddle.add_n([p.mean() for p in net.parameters()]) for net in (G, D)]
        self.fetch = [loss_D, unary("sigmoid", logits_real).mean(), unary("sigmoid", logits_fake).mean(),
                      err_real, err_fake, paddle.stack(losses_G).mean(), unary("sign", logits_real).mean(), *sums]
        if self.lecam:
            self.fetch += [reg, ema_real, ema_fake]
        # dygraph state_dict keys (structural, the same in both modes) -> this program's variable names
        self.names = {"G": {k: v.name for k, v in G.state_dict().items()},
                      "D": {k: v.name for k, v in D.state_dict().items()}}
        # {structural key: {Adam state name: variable name}}, for the trained parameters
        self.adam = {key: {k: {acc: vars_[p.name].name for acc, vars_ in opt._accumulators.items()}
                           for k, p in net.named_parameters() if p.trainable}
                     for key, net, opt in (("G", G, opt_G), ("D", D, opt_D))}

    # --- state in and out

    def _set(self, name, value):
        self.scope.var(name).get_tensor().set(np.asarray(value, dtype=np.float32), self.place)

    def _get(self, name):
        return np.array(self.scope.find_var(name).get_tensor())

    def load(self, G, D, opt_G, opt_D):
        """Copy weights, BatchNorm statistics and Adam state from the dygraph objects into the program."""
        for key, net, opt in (("G", G, opt_G), ("D", D, opt_D)):
            state, names = net.state_dict(), self.names[key]
            for k, static_name in names.items():
                self._set(static_name, state[k].numpy())
            for k, entries in checkpoint.optimizer_state(opt, net).items():  # none yet for a fresh optimizer
                for acc, value in entries.items():
                    self._set(self.adam[key][k][acc], value)

    def store(self, G, D, opt_G, opt_D):
        """Copy the program's weights, statistics and Adam state back into the dygraph objects."""
        for key, net, opt in (("G", G, opt_G), ("D", D, opt_D)):
            self.store_net(key, net)
            checkpoint.set_optimizer_state(opt, net, {k: {acc: self._get(name) for acc, name in entries.items()}
                                                      for k, entries in self.adam[key].items()})

    def store_net(self, key, net):
        """Copy the program's weights and statistics of network `key` ("G" or "D") into the dygraph `net`."""
        net.set_state_dict({k: self._get(static_name) for k, static_name in self.names[key].items()})

    # --- one iteration

    def __call__(self, real):
        """One iteration on the batch `real` (N x 3 x S x S in [-1, 1]).

        Returns the numbers train_iteration does, and G_check, D_check: the sum of each network's
        parameter means after the updates, finite while every parameter is (train.py checks it).
        """
        real = real.numpy() if isinstance(real, paddle.Tensor) else np.asarray(real)
        if real.shape[0] != self.batch:
            raise ValueError(f"this step was built for batches of {self.batch}, got {real.shape[0]}")
        # the dygraph step's noise and T's numbers, drawn in its order from Paddle's global generator
        feed = {"real": real}
        for kind, names, args in self.draws:
            if kind == "z":
                feed[names] = paddle.randn(args[0]).numpy()
            elif kind == "mask":
                feed[names] = dropout_mask(*args)
            else:
                numbers = self.augment.draw(self.batch, real.shape[-1])
                feed.update({names[k]: v for k, v in numbers.items()})
        if self.lecam:
            values = {"lecam_real": self.lecam.real or 0.0, "lecam_fake": self.lecam.fake or 0.0,
                      "lecam_decay": self.lecam.next_decay()}
            feed.update({name: np.array([v], np.float32) for name, v in values.items()})
        with paddle.pir_utils.OldIrGuard(), paddle.static.scope_guard(self.scope):
            out = self.executor.run(self.program, feed=feed, fetch_list=self.fetch)
        names = ("loss_D", "D_real", "D_fake", "err_R", "err_F", "loss_G", "sign_real", "G_check", "D_check")
        values = [np.asarray(v).item() for v in out]
        stats = dict(zip(names, values))
        if self.lecam:  # the last D update's term, and the averages after the iteration
            stats["lecam"], self.lecam.real, self.lecam.fake = values[len(names):]
        return stats
