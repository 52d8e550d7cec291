"""The CPU training step: methods.bce_iteration as one static program with oneDNN convolutions.

Paddle's eager mode runs every convolution through im2col + MKL GEMM one sample at a time
and never uses oneDNN, which is what makes a CPU DCGAN step slow. This module builds the
same iteration as methods.bce_iteration (D update on a real and a fake batch, then the G
updates, the first reusing the D update's fakes) as a legacy static program, and marks its
conv2d ops and their gradients to run on oneDNN (its batch_norm_grad fails in these programs).
G's transposed convolutions, which oneDNN runs only for inference, become the conv2d ops they
are the adjoints of (transposed_convs_as_convs), so they run on oneDNN too, forward and backward.
G's first layer, a transposed convolution of a 1x1 input, runs as the one matrix product it is
(Paddle's kernel does a matrix-vector product per sample), with the same parameter. Measured
alternatives are in benchmarks/README.md.

The balancing tricks (balance.Tricks) run inside the program too: the skip rules decide from each D
step's errors before its update, and a skipped update restores what it changed (`keeping`); the
adaptive L2's coefficient and RMSProp's warm-up rates are inputs (FastStep's docstring).

The program's networks are built in their static form where they have one (network.build's form=:
PG-GAN's resampling as matrix products, the Torch blog's upsampling + convolution as one transposed
convolution of the small image, DCGAN G's first layer as one matrix product), and their dropout as
network.FedDropout: a mask that the step draws from Paddle's generator before each run and feeds
in, the numbers eager dropout would draw (so a seeded run drops the same units on both paths).
Each form is tested against the reference, forward and backward. PG-GAN's gradient penalty takes
D's input gradient from PGGANDiscriminator.input_gradient, first-order ops only (no conv2d_grad_grad).

The weights, BatchNorm statistics and Adam moments live in this step's own scope while it
trains; `load` copies them in from the dygraph networks and optimizers, `store` copies them
back (before samples, evaluation and checkpoints), so everything else in the project keeps
using the dygraph objects. Noise comes from paddle.randn in the same order as the dygraph
step, so a seeded run draws the same numbers on both paths. Losses and weights agree with
the dygraph step to float tolerance (tests/test_faststep.py).

Example:
    step = FastStep("dcgan", G.args, batch=128, lr=2e-4, beta1=0.5, beta2=0.999)
    step.load({"G": G, "D": D}, {"G": opt_G, "D": opt_D})
    stats = step(real_batch)   # loss_D, D_real, D_fake, err_R, err_F, loss_G, sign_real, G_check, D_check
    step.store({"G": G, "D": D}, {"G": opt_G, "D": opt_D})
"""
import contextlib
import functools
import os

import runtime  # noqa: F401  (before Paddle: thread and MKL settings)
import numpy as np
import paddle
import paddle.nn.functional as F
from paddle.base.backward import _create_op_desc_
from paddle.base.framework import Operator, Variable
from paddle.base.layer_helper import LayerHelper
from paddle.static.nn.control_flow import select_input

import augment
import checkpoint
import network
from balance import Tricks, lecam_term, make_optimizer, rmsprop_lr


# Free the program's intermediate tensors in batches of this many GiB, not one by one (Paddle's default, 0). On the
# CPU the executor hands each free to its garbage-collector thread, waking it once per op (about 1,300 times in a
# PG-GAN iteration); with OpenMP's worker spinning on the other core of a 2-core machine that thread takes the main
# thread's core, and the step ran at one of two speeds by where the scheduler put it (benchmarks/README.md).
# Batches of 0.25 GiB keep at most that much more memory and wake the collector a few times per iteration.
FREE_IN_BATCHES_GB = 0.25
FREES_FLAG = "FLAGS_eager_delete_tensor_gb"


def executor_memory_flags(environ):
    """The garbage-collection flag the static steps set: FREE_IN_BATCHES_GB unless the user set it."""
    return {} if FREES_FLAG in environ else {FREES_FLAG: FREE_IN_BATCHES_GB}


ONEDNN_OPS = ("conv2d", "conv2d_grad")  # oneDNN's batch_norm_grad fails in these programs; for conv2d_transpose,
# which has no oneDNN gradient, see transposed_convs_as_convs


# ----------------------------------------------------------------------------- rewrites

def unary(op_type, x):
    """A legacy static op of one input, X -> Out: Paddle 3's tanh, sigmoid and matmul build only PIR programs."""
    return legacy_op(op_type, {"X": x}, dtype=x.dtype)


def dropout_mask(shape, p):
    """The scaled keep mask that Paddle's dropout draws for an input (or, for Dropout2D, a mask) of `shape`:
    uniform numbers from the global generator, kept where >= p, times 1 / (1 - p). Drawn in eager mode
    and fed to the program, so the static step drops what the eager step drops, from the same seed."""
    keep = (paddle.uniform(shape, min=0.0, max=1.0) >= p).numpy().astype(np.float32)
    return keep / (1.0 - p) if p < 1.0 else keep * 0.0


# ----------------------------------------------------------------------------- transposed convolutions

CONV_ATTRS = ("strides", "paddings", "padding_algorithm", "dilations", "groups", "data_format", "op_role",
              "op_device")


def transposed_convs_as_convs(program, startup):
    """Rewrite each conv2d_transpose of `program`, and its gradient, as the conv2d ops it is the adjoint of.

    Paddle's CPU conv2d_transpose runs on its own im2col kernel (oneDNN's runs only for inference and has no
    gradient). By definition, conv2d_transpose(x, W) is conv2d(., W)'s input gradient for the output gradient x,
    with the same filter, strides and paddings; so its gradients are conv2d(gy, W) for x, and conv2d's filter
    gradient at input gy and output gradient x for W. All three run as conv2d and conv2d_grad ops, on oneDNN.
    conv2d_grad needs an input of the convolution's input shape for its size only (the input gradient does not
    read its values): a zero tensor per shape, filled once by `startup`. Those transposed convolutions whose
    conv2d would not give back their input's shape (output_padding, SAME/VALID padding) stay as they are.
    Tested against the original ops, forward and backward (tests/test_faststep.py).
    """
    block, zeros = program.global_block(), {}
    for i in reversed(range(len(block.ops))):
        op = block.ops[i]
        if op.type not in ("conv2d_transpose", "conv2d_transpose_grad") or not _adjoint_conv_fits(block, op):
            continue
        attrs = {k: op.desc.attr(k) for k in CONV_ATTRS if op.desc.has_attr(k)}
        x, weight = op.input("Input"), op.input("Filter")
        if op.type == "conv2d_transpose":
            y = block.var(op.output("Output")[0])
            shape = tuple(y.shape)
            if shape not in zeros:
                zeros[shape] = _zeros(block, startup, shape, y.dtype)
            ops = [("conv2d_grad", {"Input": [zeros[shape]], "Filter": weight, "Output@GRAD": x},
                    {"Input@GRAD": op.output("Output")})]
        else:
            grad_y, grad_x, grad_w = op.input("Output@GRAD"), op.output("Input@GRAD"), op.output("Filter@GRAD")
            ops = ([("conv2d", {"Input": grad_y, "Filter": weight}, {"Output": grad_x})] if grad_x else []) + \
                  ([("conv2d_grad", {"Input": grad_y, "Filter": weight, "Output@GRAD": x}, {"Filter@GRAD": grad_w})]
                   if grad_w else [])
        block._remove_op(i)
        for k, (op_type, inputs, outputs) in enumerate(ops):
            desc = block.desc._insert_op(i + k)
            desc.copy_from(_create_op_desc_(op_type, inputs, outputs, dict(attrs)))
            block.ops.insert(i + k, Operator(block, desc))


def _adjoint_conv_fits(block, op):
    """Whether conv2d with `op`'s filter and attributes maps the transposed convolution's output shape back to
    its input's: NCHW, explicit padding, no output_padding, known sizes."""
    x = block.var(op.input("Input")[0]).shape
    y = block.var((op.output("Output") if op.type == "conv2d_transpose" else op.input("Output@GRAD"))[0]).shape
    k = block.var(op.input("Filter")[0]).shape[2:]
    if (op.attr("data_format") not in ("NCHW", "AnyLayout") or op.attr("padding_algorithm") != "EXPLICIT"
            or any(op.attr("output_padding") or []) or op.attr("output_size") or -1 in (*x, *y)):
        return False
    pads = list(op.attr("paddings"))
    pads = [pads[0], pads[0], pads[1], pads[1]] if len(pads) == 2 else pads
    sizes = [(y[2 + a] + pads[2 * a] + pads[2 * a + 1] - op.attr("dilations")[a] * (k[a] - 1) - 1)
             // op.attr("strides")[a] + 1 for a in (0, 1)]
    return sizes == list(x[2:])


def _zeros(block, startup, shape, dtype):
    """A persistable zero tensor of `shape`, which `startup` fills."""
    name = "transposed_conv_zeros_" + "x".join(map(str, shape))
    block.create_var(name=name, shape=shape, dtype=dtype, persistable=True)
    out = startup.global_block().create_var(name=name, shape=shape, dtype=dtype, persistable=True)
    startup.global_block().append_op(type="fill_constant", outputs={"Out": [out]},
                                     attrs={"shape": list(shape), "dtype": out.dtype, "value": 0.0})
    return name


def _bce(logits, target):
    return F.binary_cross_entropy_with_logits(logits, paddle.full_like(logits, target))


# ----------------------------------------------------------------------------- Paddle 3's legacy programs

def legacy_op(op_type, inputs, attrs=None, dtype="float32", output="Out"):
    """One legacy static op with one output (Paddle 3's Python API builds some ops only into PIR programs)."""
    helper = LayerHelper(op_type)
    out = helper.create_variable_for_type_inference(dtype)
    helper.append_op(type=op_type, inputs=inputs, outputs={output: out}, attrs=dict(attrs or {}))  # it adds its own
    return out


def legacy_grid_sample(x, grid):
    """augment.grid_sample as the legacy grid_sampler op, for ADA in a static step."""
    return legacy_op("grid_sampler", {"X": x, "Grid": grid}, augment.GRID_SAMPLE, dtype=x.dtype, output="Output")


def _matmul(x, y, transpose_x=False, transpose_y=False, name=None):
    return legacy_op("matmul_v2", {"X": x, "Y": y}, {"trans_x": transpose_x, "trans_y": transpose_y})


def _sum(x, axis=None, dtype=None, keepdim=False, name=None):
    """paddle.sum and Tensor.sum in a legacy program."""
    dims = [] if axis is None else [axis] if isinstance(axis, int) else list(axis)
    return legacy_op("reduce_sum", {"X": x}, {"dim": dims, "keep_dim": keepdim, "reduce_all": axis is None},
                     dtype=x.dtype)


@contextlib.contextmanager
def legacy_api():
    """While a program is built: the paddle (and paddle.nn.functional) functions that networks call and that
    Paddle 3 builds only into PIR programs (sqrt, rsqrt, tanh, sigmoid, sign, exp, matmul, sum, and the
    variables' sum method) build the legacy ops of the same names instead.
    The networks' code stays the eager code."""
    modules = (paddle, F)   # networks call both paddle.tanh and F.sigmoid
    saved = [(m, name, getattr(m, name)) for m in modules
             for name in ("sqrt", "rsqrt", "tanh", "sigmoid", "sign", "exp", "matmul", "sum") if hasattr(m, name)]
    saved.append((Variable, "sum", Variable.sum))   # x.sum(axis=1) of the methods' losses
    for m, name, _ in saved:
        setattr(m, name, {"matmul": _matmul, "sum": _sum}.get(name) or
                functools.partial(lambda op, x, name=None: unary(op, x), name))
    try:
        yield
    finally:
        for m, name, f in saved:
            setattr(m, name, f)


# ----------------------------------------------------------------------------- the steps

def require_static_step(arch):
    """ValueError unless network.ARCHITECTURES says `arch` has a static step."""
    if not network.architecture(arch).static_step:
        raise ValueError(f"no static step for {arch!r} (its network.ARCHITECTURES entry says so)")


class StaticStep:
    """What every static step shares: its own scope and program, the random inputs it draws in the eager
    step's order, and copying weights and optimizer state between the program and the dygraph objects.

    Subclasses build the program in `_build` with `self.input` (a random input), `self.T` (augmentation),
    `self.register` (which networks and optimizers it holds), and set `self.fetch`.
    """
    onednn = ONEDNN_OPS   # the ops that run on oneDNN
    labels = None         # balance.Tricks whose label tricks draw D's targets (FastStep's)
    rewind_from = None    # the draw from which `rewind` holds the generator's state (numbers a run may give back)

    def __init__(self, batch, size, augment, build):
        # Run the ops one at a time (oneDNN and MKL use the cores themselves) and in the program's
        # order: Adam updates parameters in place, and without this the executor's own schedule let
        # a later forward read D's weights before their update from the second run on. Set here,
        # not at import: importing this module changes nothing.
        paddle.set_flags({"FLAGS_new_executor_serial_run": True, "FLAGS_new_executor_sequential_run": True,
                          **executor_memory_flags(os.environ)})
        self.batch, self.size = batch, size
        self.augment = augment if augment is not None and augment.active else None
        self.scope = paddle.static.Scope()
        self.place = paddle.CPUPlace()
        # Every random input in the order the dygraph step draws it: (kind, name or {key: name}, arguments)
        self.draws = []
        # Building draws a sample of T's numbers (for their shapes) and the startup's initializers draw
        # from the global generator: leave the training noise where the dygraph step would find it.
        rng = paddle.get_rng_state()
        self.shapes = {k: v.shape for k, v in self.augment.draw(batch, size).items()} if self.augment else {}
        with paddle.pir_utils.OldIrGuard():
            self.program, startup = paddle.static.Program(), paddle.static.Program()
            with paddle.static.program_guard(self.program, startup), paddle.utils.unique_name.guard(), legacy_api():
                build()
            transposed_convs_as_convs(self.program, startup)
            for op in self.program.global_block().ops:
                if op.type in self.onednn:
                    op._set_attr("use_mkldnn", True)
            self.executor = paddle.static.Executor(self.place)
            with paddle.static.scope_guard(self.scope):
                self.executor.run(startup)
        paddle.set_rng_state(rng)

    # --- building

    def input(self, kind, shape, *extra):
        """A random input of the program, which each run draws as the eager step would (see `draw`)."""
        x = paddle.static.data(f"{kind}{len(self.draws)}", shape, "float32")
        self.draws.append((kind, x.name, (shape, *extra)))
        return x

    def T(self, x):
        """D's view of `x` (augment.Augment), its random numbers an input."""
        if not self.augment:
            return x
        count = x.shape[0]   # the batch, or the VAE/GAN's reals and fakes together
        # T's numbers are per image (or per image and channel): as many more for more images
        shapes = {k: [shape[0] // self.batch * count, *shape[1:]] for k, shape in self.shapes.items()}
        numbers = {k: paddle.static.data(f"T{len(self.draws)}_{k}", shape, "float32") for k, shape in shapes.items()}
        self.draws.append(("T", {k: v.name for k, v in numbers.items()}, (count,)))
        out = self.augment.apply(x, numbers, resample=legacy_grid_sample)
        # some of T's ops leave the size unknown to the program; networks that read it (PG-GAN's D) need it
        return out if -1 not in out.shape else out.reshape(x.shape)

    def networks(self, arch, arch_args, roles, form="static"):
        """The architecture's networks of `roles`, in their static form where they have forms (network.build:
        PG-GAN's matrix-product resampling, the Torch blog's fused upsampling convolutions, DCGAN G's first layer
        as a product) and with dropout masks as program inputs; weights come from `load`."""
        mask = functools.partial(self.input, "mask")
        nets = network.build(arch, form, mask, **arch_args)
        return {role: nets[role] if role in nets else network.build_net(arch, role.split("_")[0], arch_args, form, mask)
                for role in roles}

    def register(self, nets, opts):
        """Remember the program's names of the networks' state and of the optimizers' accumulators."""
        # dygraph state_dict keys (structural, the same in both modes) -> this program's variable names
        self.names = {key: {k: v.name for k, v in net.state_dict().items()} for key, net in nets.items()}
        # {structural key: {Adam state name: variable name}}, for the trained parameters
        # (PG-GAN's layers of other resolutions take no part in a stage's program and have none)
        self.adam = {key: {k: {acc: vars_[p.name].name for acc, vars_ in opt._accumulators.items() if p.name in vars_}
                           for k, p in nets[key].named_parameters() if p.trainable}
                     for key, opt in opts.items()}
        self.adam = {key: {k: entries for k, entries in table.items() if entries} for key, table in self.adam.items()}

    # --- running

    def draw(self):
        """The feed of the random inputs: the eager step's noise, dropout masks and T's numbers, drawn in its
        order from Paddle's global generator."""
        feed = {}
        for i, (kind, names, args) in enumerate(self.draws):
            if i == self.rewind_from:
                self.rewind = paddle.get_rng_state()
            if kind == "z":
                feed[names] = paddle.randn(args[0]).numpy()
            elif kind == "u":
                feed[names] = paddle.rand(args[0]).numpy()
            elif kind == "mask":
                feed[names] = dropout_mask(*args)
            elif kind == "labels":
                shape = args[0]
                targets = self.labels.targets(paddle.zeros(shape), paddle.zeros(shape))
                feed.update({names[k]: t.numpy() for k, t in zip(("real", "fake"), targets)})
            else:
                numbers = self.augment.draw(args[0], self.size)
                feed.update({names[k]: v for k, v in numbers.items()})
        if self.rewind_from == len(self.draws):
            self.rewind = paddle.get_rng_state()
        return feed

    def run(self, real, feed):
        real = real.numpy() if isinstance(real, paddle.Tensor) else np.asarray(real)
        if real.shape[0] != self.batch:
            raise ValueError(f"this step was built for batches of {self.batch}, got {real.shape[0]}")
        with paddle.pir_utils.OldIrGuard(), paddle.static.scope_guard(self.scope):
            out = self.executor.run(self.program, feed={"real": real, **feed}, fetch_list=self.fetch)
        return [np.asarray(v).item() for v in out]

    # --- state in and out

    def _set(self, name, value):
        self.scope.var(name).get_tensor().set(np.asarray(value, dtype=np.float32), self.place)

    def _get(self, name):
        return np.array(self.scope.find_var(name).get_tensor())

    def load(self, nets, opts):
        """Copy weights, BatchNorm statistics and optimizer state in from the dygraph objects: a method's
        {key: network} and {key: optimizer}, of which the program's own keys are read."""
        nets, opts = self.own(nets, opts)
        for key, net in nets.items():
            state = net.state_dict()
            for k, static_name in self.names[key].items():
                self._set(static_name, state[k].numpy())
        for key, opt in opts.items():
            for k, entries in checkpoint.optimizer_state(opt, nets[key]).items():  # none yet for a fresh optimizer
                for acc, value in entries.items():
                    if k in self.adam[key]:
                        self._set(self.adam[key][k][acc], value)

    def store(self, nets, opts):
        """Copy the program's weights, statistics and optimizer state back into the dygraph objects (as `load`)."""
        nets, opts = self.own(nets, opts)
        for key, net in nets.items():
            self.store_net(key, net)
        for key, opt in opts.items():  # the parameters outside this program keep their state
            checkpoint.ensure_accumulators(opt, nets[key])
            state = checkpoint.optimizer_state(opt, nets[key])
            state.update({k: {acc: self._get(name) for acc, name in entries.items()}
                          for k, entries in self.adam[key].items()})
            checkpoint.set_optimizer_state(opt, nets[key], state)

    def own(self, nets, opts):
        """The networks and optimizers among `nets`, `opts` that this program holds (a method may have more:
        G's moving average outside the BCE step)."""
        return {key: nets[key] for key in self.names}, {key: opts[key] for key in self.adam}

    def store_net(self, key, net):
        """Copy the program's weights and statistics of network `key` (as "G") into the dygraph `net`."""
        net.set_state_dict({k: self._get(static_name) for k, static_name in self.names[key].items()})


class FastStep(StaticStep):
    """methods.bce_iteration for one architecture and batch size, as a static program on the CPU, with the
    Torch blog's balancing (balance.Tricks) as the eager step applies it:

    - the skip rules (margin, equilibrium) decide inside the program from each D step's errors, before its
      update; a skipped update leaves the weights and optimizer state as they were. A skipped G phase
      (the first D step's word) also leaves the BatchNorm statistics its forwards moved, and the random
      numbers drawn for it go back to the generator, as if the eager step had never drawn them;
    - the adaptive L2 on D takes its coefficient as an input;
    - RMSProp takes each update's warm-up rate as an input (D's picked in the program by how many of the
      iteration's earlier D steps updated);
    - label tricks draw D's targets as eager d_step draws them.
    """

    def __init__(self, arch, arch_args, batch, lr, beta1, beta2, d_steps=1, g_steps=2, augment=None, lecam=None,
                 tricks=None):
        require_static_step(arch)
        self.z_dim, self.d_steps, self.g_steps, self.lecam = arch_args["z_dim"], d_steps, g_steps, lecam
        self.lr = lr
        # balancing and label tricks, and their counters, which each run moves as bce_iteration does
        self.tricks = tricks if tricks is not None else Tricks()
        # balance.Tricks' label tricks (soft, jittered, flipped targets): D's targets drawn as eager d_step draws them
        self.labels = self.tricks if not self.tricks.plain_labels else None
        super().__init__(batch, arch_args["size"], augment,
                         functools.partial(self._build, arch, arch_args, lr, beta1, beta2))

    def _build(self, arch, arch_args, lr, beta1, beta2):
        nets = self.networks(arch, arch_args, ("G", "D"))
        G, D = nets["G"], nets["D"]
        n, z_dim, size, T, tricks = self.batch, self.z_dim, self.size, self.T, self.tricks
        real = paddle.static.data("real", [n, 3, size, size], "float32")

        def noise():
            return self.input("z", [n, z_dim])

        opt_D = make_optimizer(tricks.optimizer, lr, beta1, beta2, D.parameters())
        opt_G = make_optimizer(tricks.optimizer, lr, beta1, beta2, G.parameters())
        warmup = tricks.optimizer == "rmsprop"
        if warmup:  # each update's rate: D's for its count before the iteration + 0, 1, ...; G's per update
            rates_D, rates_G = (paddle.static.data(name, [k], "float32")
                                for name, k in (("rates_D", self.d_steps), ("rates_G", self.g_steps)))
        d_names = {p.name for p in D.parameters()}
        if self.lecam:
            ema_real, ema_fake, decay = lecam_inputs()
        skips = []  # per D step, (skip D, skip G): the rule's decision

        fake = G(noise())
        for i in range(self.d_steps):
            more = fake if i == 0 else G(noise())
            logits_real, logits_fake = D(T(real)), D(T(more.detach()))
            err_real, err_fake = _bce(logits_real, 1.0), _bce(logits_fake, 0.0)
            if tricks.skipping:
                skips.append(skip_rule(err_real, err_fake, *tricks.band()))
            if i == 0:
                loss_G_unchanged = _bce(logits_fake, 1.0)  # G's loss when its updates are skipped
            if self.labels:
                targets = {k: paddle.static.data(f"labels{len(self.draws)}_{k}", [n], "float32")
                           for k in ("real", "fake")}
                self.draws.append(("labels", {k: v.name for k, v in targets.items()}, ([n],)))
                loss_D = (F.binary_cross_entropy_with_logits(logits_real, targets["real"])
                          + F.binary_cross_entropy_with_logits(logits_fake, targets["fake"]))
            else:
                loss_D = err_real + err_fake
            total = loss_D  # bce_iteration's order: loss, then the L2 penalty, then LeCam's term
            if tricks.balance == "l2":
                coef = paddle.static.data("coef_l2", [1], "float32")
                total = total + coef * paddle.add_n([(p * p).sum() for p in D.parameters() if p.trainable]) / 2
            if self.lecam:
                reg, ema_real, ema_fake = lecam_regulariser(self.lecam, logits_real, logits_fake, ema_real, ema_fake,
                                                            decay if i == 0 else self.lecam.decay)
                total = total + reg
            rate = None
            if warmup:  # the rate of D's count: its count before the iteration + the earlier steps that updated
                rate = (gather_count(rates_D, [logical("not", s[0]) for s in skips[:i]])
                        if tricks.skipping and i else rates_D[i:i + 1])
            self.update(opt_D, total, D.parameters(), rate=rate, skip=skips[i][0] if tricks.skipping else None)

        # G's phase: skipped as a whole by the first D step's word, with every state it touches kept
        self.rewind_from = len(self.draws)
        kept = []
        if tricks.skipping:  # G's weights, statistics and optimizer state, and D's statistics
            kept = updated_state(opt_G, G.parameters()) + statistics(G) + statistics(D)
        losses_G = []
        with keeping(skips[0][1] if tricks.skipping else None, kept):
            for i in range(self.g_steps):
                more = fake if i == 0 else G(noise())
                loss_G = _bce(D(T(more)), 1.0)
                self.update(opt_G, loss_G, G.parameters(), rate=rates_G[i:i + 1] if warmup else None,
                            no_grad_set=d_names)
                losses_G.append(loss_G)
        loss_G = paddle.stack(losses_G).mean()
        if tricks.skipping:
            loss_G = paddle.where(skips[0][1], loss_G_unchanged, loss_G)
        self.fetch = [loss_D, F.sigmoid(logits_real).mean(), F.sigmoid(logits_fake).mean(), err_real, err_fake,
                      loss_G, paddle.sign(logits_real).mean(), *parameter_sums(G, D)]
        if self.lecam:
            self.fetch += [reg, ema_real, ema_fake]
        self.fetch += [flag for pair in skips for flag in pair]
        self.register(nets, {"G": opt_G, "D": opt_D})

    @staticmethod
    def update(opt, loss, parameters, rate=None, skip=None, no_grad_set=None):
        """`opt`'s update of `parameters` by `loss`, at the learning rate `rate` (a program variable) if given,
        undone where the boolean `skip` is true (weights and optimizer state as they were)."""
        if rate is not None:
            opt._learning_rate_map[paddle.static.default_main_program()] = rate
        if skip is None:
            opt.minimize(loss, parameters=parameters, no_grad_set=no_grad_set)
            return
        apply_gradients(opt, opt.backward(loss, parameters=parameters, no_grad_set=no_grad_set), skip)

    def __call__(self, real):
        """One iteration on the batch `real` (N x 3 x S x S in [-1, 1]).

        Returns the numbers bce_iteration does, and G_check, D_check: the sum of each network's
        parameter means after the updates, finite while every parameter is (train.py checks it).
        Moves the tricks' counters (updates, skips, the L2 coefficient) as bce_iteration does.
        """
        tricks = self.tricks
        feed = self.draw()
        if self.lecam:
            feed.update(lecam_feed(self.lecam))
        if tricks.balance == "l2":
            feed["coef_l2"] = np.array([tricks.coef_l2], np.float32)
        if tricks.optimizer == "rmsprop":
            feed["rates_D"] = np.array([rmsprop_lr(self.lr, tricks.d_updates + i) for i in range(self.d_steps)],
                                       np.float32)
            feed["rates_G"] = np.array([rmsprop_lr(self.lr, tricks.g_updates + i) for i in range(self.g_steps)],
                                       np.float32)
        names = ("loss_D", "D_real", "D_fake", "err_R", "err_F", "loss_G", "sign_real", "G_check", "D_check")
        values = self.run(real, feed)
        stats = dict(zip(names, values))
        rest = values[len(names):]
        if self.lecam:  # the last D update's term, and the averages after the iteration
            (stats["lecam"], self.lecam.real, self.lecam.fake), rest = rest[:3], rest[3:]
        skip_d, skip_g = [bool(v) for v in rest[0::2]], [bool(v) for v in rest[1::2]]
        tricks.d_skips += sum(skip_d)
        tricks.g_skips += sum(skip_g)
        tricks.d_updates += self.d_steps - sum(skip_d)
        if skip_g and skip_g[0]:  # the eager step would not have drawn G's phase's numbers
            paddle.set_rng_state(self.rewind)
        else:
            tricks.g_updates += self.g_steps
        tricks.after(stats["loss_G"])
        return stats


def skip_rule(err_real, err_fake, low, high):
    """balance.margin_rule and equilibrium_rule in a program: (skip D, skip G) as booleans, for D's errors and
    the rule's band (Tricks.band). D's update is skipped while either error is below `low`, G's while either
    is above `high`; both update when both would be skipped. Compared in float64, as the eager rule compares
    the errors' float values."""
    errors = [paddle.cast(e, "float64").reshape([1]) for e in (err_real, err_fake)]
    below = logical("or", *[e < low for e in errors])
    above = logical("or", *[e > high for e in errors])
    return logical("and", below, logical("not", above)), logical("and", above, logical("not", below))


def logical(op, x, y=None):
    """Paddle's logical_and/or/not as legacy ops (Paddle 3 builds them only into PIR programs)."""
    return legacy_op(f"logical_{op}", {"X": x} if y is None else {"X": x, "Y": y}, dtype="bool")


def gather_count(rates, done):
    """rates[number of true flags in `done`]: the rate of an update after those of the iteration's earlier steps."""
    count = paddle.add_n([paddle.cast(d, "int64").reshape([1]) for d in done])
    return paddle.gather(rates, count)


def updated_state(opt, parameters):
    """The program variables that `opt`'s update of `parameters` changes: the trained parameters and their
    optimizer state (moments, powers, mean squares), created now if the optimizer has not yet."""
    trained = [p for p in parameters if p.trainable]
    opt._create_accumulators(paddle.static.default_main_program().global_block(), trained)
    names = {p.name for p in trained}
    return trained + [var for table in opt._accumulators.values() for name, var in table.items() if name in names]


def apply_gradients(opt, grads, skip=None):
    """opt.apply_gradients(grads), undone where the boolean `skip` is true (weights and optimizer state as they
    were; see `keeping`)."""
    with keeping(skip, updated_state(opt, [p for p, _ in grads]) if skip is not None else []):
        opt.apply_gradients(grads)


def statistics(net):
    """`net`'s state that no optimizer updates: BatchNorm's running statistics."""
    return [v for v in net.state_dict().values() if not getattr(v, "trainable", False)]


@contextlib.contextmanager
def keeping(skip, variables):
    """The ops appended within leave `variables` as they were where the boolean `skip` is true: copies
    taken before, and put back after. With skip None, nothing is added."""
    if skip is None:
        yield
        return
    saved = [paddle.assign(v) for v in variables]
    yield
    which = paddle.cast(skip, "int32")  # 1: the copy from before
    for v, before in zip(variables, saved):
        kept = select_input([v, before], which)
        # not a path for later gradients: a later backward would otherwise differentiate through the copies
        # (assign passes its input's stop_gradient on to `v`, whose own is put back)
        trainable, before.stop_gradient, kept.stop_gradient = not v.stop_gradient, True, True
        paddle.assign(kept, output=v)
        v.stop_gradient = not trainable


def lecam_inputs():
    """LeCam's averages before the iteration and the decay of its first update (0 at the start): program inputs."""
    return tuple(paddle.static.data(name, [1], "float32") for name in ("lecam_real", "lecam_fake", "lecam_decay"))


def lecam_regulariser(lecam, out_real, out_fake, ema_real, ema_fake, keep):
    """balance.LeCam in a program: the averages take the batch (keeping `keep` of themselves), then the weighted
    term. Returns (term, new averages)."""
    ema_real = keep * ema_real + (1 - keep) * out_real.mean().detach()
    ema_fake = keep * ema_fake + (1 - keep) * out_fake.mean().detach()
    return lecam.weight * lecam_term(out_real, out_fake, ema_real, ema_fake), ema_real, ema_fake


def parameter_sums(*nets):
    """Per network, the sum of its parameters' means after the updates: not finite once any parameter is not."""
    return [paddle.add_n([p.mean() for p in net.parameters()]) for net in nets]


def lecam_feed(lecam):
    """LeCam's averages before the iteration and the decay of its first update, as the program's inputs."""
    values = {"lecam_real": lecam.real or 0.0, "lecam_fake": lecam.fake or 0.0, "lecam_decay": lecam.next_decay()}
    return {name: np.array([v], np.float32) for name, v in values.items()}


class ProgressiveStep(StaticStep):
    """progressive.iteration at one resolution, as a static program on the CPU: WGAN-GP's D update with its
    gradient penalty (a double backward: the program differentiates the gradient of D at x_hat), the G
    update, and G's moving average. One program per stage: `fading` programs take alpha as an input,
    stabilised ones are built with alpha = 1. ProgressiveMethod builds a new one when the stage or the
    batch changes.

    Example:
        step = ProgressiveStep("pggan", G.args, res=32, fading=False, batch=16, lr=1e-3, beta1=0.0, beta2=0.99,
                               gp_weight=progressive.GP_WEIGHT, drift=progressive.DRIFT)
        step.load(nets, opts)                    # {"G", "D", "G_ema"}, {"G", "D"}
        stats = step(progressive.real_at(real, 32, 1.0), alpha=1.0, beta=methods.ema_beta(updates))
    """

    def __init__(self, arch, arch_args, res, fading, batch, lr, beta1, beta2, gp_weight, drift, augment=None,
                 lecam=None):
        require_static_step(arch)
        self.z_dim, self.fading, self.lecam = arch_args["z_dim"], fading, lecam
        self.gp_weight, self.drift = gp_weight, drift   # progressive.GP_WEIGHT, DRIFT
        super().__init__(batch, res, augment, functools.partial(self._build, arch, arch_args, lr, beta1, beta2))

    def _build(self, arch, arch_args, lr, beta1, beta2):
        nets = self.networks(arch, arch_args, ("G", "D", "G_ema"))
        G, D, G_ema = nets["G"], nets["D"], nets["G_ema"]
        n, res, T = self.batch, self.size, self.T
        alpha = paddle.static.data("alpha", [1], "float32") if self.fading else 1.0
        for net in (G, D):
            net.set_stage(res, 0.0 if self.fading else 1.0)
            net.alpha = alpha
        real = paddle.static.data("real", [n, 3, res, res], "float32")
        adam = dict(learning_rate=lr, beta1=beta1, beta2=beta2, epsilon=1e-8)
        opt_D = paddle.optimizer.Adam(parameters=D.parameters(), **adam)
        opt_G = paddle.optimizer.Adam(parameters=G.parameters(), **adam)

        fake = G(self.input("z", [n, self.z_dim])).detach()
        real, fake = T(real), T(fake)
        score_real, score_fake = D(real), D(fake)
        # progressive.gradient_penalty: 10 (||grad_x D(x_hat)|| - 1)^2, x_hat = lerp(real, fake, u)
        x_hat = real + (fake - real) * self.input("u", [n, 1, 1, 1])
        grad = D.input_gradient(x_hat)   # = paddle.static.gradients([D(x_hat)], [x_hat]), without second derivatives
        norm = paddle.sqrt((grad * grad).reshape([n, -1]).sum(axis=1) + 1e-12)   # progressive.gradient_penalty
        gp = self.gp_weight * ((norm - 1.0) ** 2).mean()
        wasserstein = score_fake.mean() - score_real.mean()
        loss_D = wasserstein + gp + self.drift * (score_real * score_real).mean()
        if self.lecam:
            ema_real, ema_fake, decay = lecam_inputs()
            reg, ema_real, ema_fake = lecam_regulariser(self.lecam, score_real, score_fake, ema_real, ema_fake, decay)
            opt_D.minimize(loss_D + reg, parameters=D.parameters())
        else:
            opt_D.minimize(loss_D, parameters=D.parameters())
        loss_G = -D(T(G(self.input("z", [n, self.z_dim])))).mean()
        opt_G.minimize(loss_G, parameters=G.parameters(), no_grad_set={p.name for p in D.parameters()})
        # methods.ema_update: G_ema <- beta G_ema + (1 - beta) G, both numbers fed (float32 of the float64 ones)
        beta, rest = (paddle.static.data(name, [1], "float32") for name in ("ema_beta", "ema_rest"))
        for e, p in zip(G_ema.parameters(), G.parameters()):
            paddle.assign(e * beta + p * rest, output=e)
        self.fetch = [loss_D, loss_G, gp, -wasserstein, score_real.mean(), score_fake.mean(),
                      paddle.sign(score_real).mean(), *parameter_sums(G, D)]
        if self.lecam:
            self.fetch += [reg, ema_real, ema_fake]
        self.register(nets, {"G": opt_G, "D": opt_D})

    def __call__(self, real, alpha, beta):
        """One iteration on `real` (progressive.real_at of the batch at this stage) at `alpha`, G's average
        taking (1 - beta) of G. Returns progressive.iteration's numbers and G_check, D_check."""
        feed = self.draw()
        feed.update(ema_beta=np.array([beta], np.float32), ema_rest=np.array([1.0 - beta], np.float32))
        if self.fading:
            feed["alpha"] = np.array([alpha], np.float32)
        if self.lecam:
            feed.update(lecam_feed(self.lecam))
        names = ("loss_D", "loss_G", "gp", "wasserstein", "D_real", "D_fake", "sign_real", "G_check", "D_check")
        values = self.run(real, feed)
        stats = dict(zip(names, values))
        if self.lecam:
            stats["lecam"], self.lecam.real, self.lecam.fake = values[len(names):]
        return stats


class VAEStep(StaticStep):
    """methods.VAEMethod's iteration as a static program on the CPU: `losses` (methods.vae_losses, the eager
    step's own function) built on the program's variables, its noise an input drawn as the eager step draws
    it; one backward of the loss, then one Adam step of each network.

    Example:
        step = VAEStep("vae", E.args, batch=64, lr=1e-3, beta1=0.9, beta2=0.999, losses=methods.vae_losses)
        step.load({"E": E, "G": G}, {"E": opt_E, "G": opt_G})
        stats = step(real_batch)              # {'loss', 'kl', 'reconstruction', 'E_check', 'G_check'}
        step.store({"E": E, "G": G}, {"E": opt_E, "G": opt_G})
    """

    def __init__(self, arch, arch_args, batch, lr, beta1, beta2, losses):
        require_static_step(arch)
        super().__init__(batch, arch_args["size"], None,
                         functools.partial(self._build, arch, arch_args, lr, beta1, beta2, losses))

    def _build(self, arch, arch_args, lr, beta1, beta2, losses):
        nets = self.networks(arch, arch_args, ("E", "G"))
        n, size = self.batch, self.size
        real = paddle.static.data("real", [n, 3, size, size], "float32")
        loss, kl, rec = losses(nets["E"], nets["G"], real, lambda shape: self.input("z", [n, shape[-1]]))
        opts = {key: make_optimizer("adam", lr, beta1, beta2, net.parameters()) for key, net in nets.items()}
        grads = opts["E"].backward(loss, parameters=[p for net in nets.values() for p in net.parameters()])
        for key, net in nets.items():   # methods.update: one backward, then each optimizer's step
            names = {p.name for p in net.parameters()}
            opts[key].apply_gradients([(p, g) for p, g in grads if p.name in names])
        self.fetch = [loss, kl, rec, *parameter_sums(*nets.values())]
        self.register(nets, opts)

    def __call__(self, real):
        """One iteration on the batch `real`: vae_losses' three numbers, E_check and G_check (as weight_checks)."""
        return dict(zip(("loss", "kl", "reconstruction", "E_check", "G_check"), self.run(real, self.draw())))


class VAEGANStep(StaticStep):
    """methods.VAEGANMethod's iteration as a static program on the CPU, built from the eager step's own halves
    (`halves`: methods.vaegan_vae_losses, vaegan_gan_losses): the backward of KL + L_llike with D frozen, G's
    gradient of it times gamma plus its (reversed) gradient of the GAN loss, D's of 0.5 L_GAN; then E's step,
    and G's and D's unless the balancing rule skips them (decided in the program, as FastStep decides; a skipped step
    leaves the weights and optimizer state as they were).

    Example:
        step = VAEGANStep("vaegan", E.args, 64, 3e-4, 0.9, 0.999, gamma=1e-2, d_reconstructions=False,
                          augment=None, tricks=Tricks(balance="equilibrium", margin=0.35, optimizer="rmsprop"),
                          halves=(methods.vaegan_vae_losses, methods.vaegan_gan_losses))
        step.load(nets, opts)                 # {"E", "G", "D"}, each
        stats = step(real_batch)              # VAEGANMethod's numbers and E_check, G_check, D_check
        step.store(nets, opts)
    """

    def __init__(self, arch, arch_args, batch, lr, beta1, beta2, gamma, d_reconstructions, augment, tricks, halves):
        require_static_step(arch)
        self.z_dim, self.gamma, self.d_reconstructions = arch_args["z_dim"], gamma, d_reconstructions
        self.tricks = tricks
        super().__init__(batch, arch_args["size"], augment,
                         functools.partial(self._build, arch, arch_args, lr, beta1, beta2, *halves))

    def _build(self, arch, arch_args, lr, beta1, beta2, vae_losses, gan_losses):
        nets = self.networks(arch, arch_args, ("E", "G", "D"))
        E, G, D = nets["E"], nets["G"], nets["D"]
        n, tricks = self.batch, self.tricks
        real = paddle.static.data("real", [n, 3, self.size, self.size], "float32")

        def noise(shape):
            return self.input("z", [n, shape[-1]])

        z, kl, llike = vae_losses(E, G, D, real, noise)
        logits, err_real, err_fake = gan_losses(G, D, self.T, real, z, noise, self.z_dim, self.d_reconstructions)
        loss_D = 0.5 * err_real + 0.5 * err_fake
        opts = {key: make_optimizer(tricks.optimizer, lr, beta1, beta2, net.parameters()) for key, net in nets.items()}
        params = {key: [p for p in net.parameters() if p.trainable] for key, net in nets.items()}
        vae = {p.name: g for p, g in opts["E"].backward(kl + llike, parameters=params["E"] + params["G"],
                                                         no_grad_set={p.name for p in params["D"]})}
        gan = {p.name: g for p, g in opts["D"].backward(loss_D, parameters=params["G"] + params["D"])}
        skip_d, skip_g = skip_rule(err_real, err_fake, *tricks.band()) if tricks.skipping else (None, None)
        for key, grads, skip in (("E", [(p, vae[p.name]) for p in params["E"]], None),
                                 ("G", [(p, vae[p.name] * self.gamma + gan[p.name]) for p in params["G"]], skip_g),
                                 ("D", [(p, gan[p.name]) for p in params["D"]], skip_d)):
            apply_gradients(opts[key], grads, skip)
        self.fetch = [kl + llike, kl, llike, err_real + err_fake, loss_D, err_real, err_fake,
                      F.sigmoid(logits[:n]).mean(), F.sigmoid(logits[n:]).mean(), paddle.sign(logits[:n]).mean(),
                      *parameter_sums(E, G, D)]
        self.fetch += [skip_d, skip_g] if tricks.skipping else []
        self.register(nets, opts)

    def __call__(self, real):
        """One iteration on the batch `real`: VAEGANMethod's numbers (sign_real among them, for ADA) and
        E_check, G_check, D_check; the tricks count the skips."""
        values = self.run(real, self.draw())
        (loss_E, kl, llike, errors, loss_D, err_R, err_F, D_real, D_fake, sign_real, *checks) = values[:13]
        if self.tricks.skipping:
            skip_d, skip_g = (bool(v) for v in values[13:])
            self.tricks.d_skips += skip_d
            self.tricks.g_skips += skip_g
        return {"loss_E": loss_E, "kl": kl, "llike": llike, "loss_G": self.gamma * llike - errors, "loss_D": loss_D,
                "err_R": err_R, "err_F": err_F, "D_real": D_real, "D_fake": D_fake, "sign_real": sign_real,
                **dict(zip(("E_check", "G_check", "D_check"), checks))}
