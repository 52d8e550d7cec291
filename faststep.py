"""The static CPU training step: a method's own iteration recorded as one static program with oneDNN convolutions,
and the Paddle internals that takes (the one module that uses Paddle's private or legacy-program API).

Paddle's eager mode runs every convolution through im2col + MKL GEMM one sample at a time
and never uses oneDNN, which is what makes a CPU GAN step slow. Each training method writes its
iteration once (methods.Method.iteration: methods.bce_iteration, progressive.iteration, the VAE's and
the VAE/GAN's); `Recording` runs that same function while a legacy static program is being recorded,
answering its calls (noise, updates, skip rules, ...) with program ops, and marks the program's
conv2d ops and their gradients to run on oneDNN (its batch_norm_grad fails in these programs).
G's transposed convolutions, which oneDNN runs only for inference, become the conv2d ops they
are the adjoints of (transposed_convs_as_convs), so they run on oneDNN too, forward and backward.
Measured alternatives are in benchmarks/README.md.

The program's networks are built in their static form where they have one (network.build's form=:
PG-GAN's resampling as matrix products, the Torch blog's upsampling + convolution as one transposed
convolution of the small image, DCGAN G's first layer as one matrix product), and their dropout as
network.FedDropout: a mask that the step draws from Paddle's generator before each run and feeds
in, the numbers eager dropout would draw (so a seeded run drops the same units on both paths).
Each form is tested against the reference, forward and backward. PG-GAN's gradient penalty takes
D's input gradient from PGGANDiscriminator.input_gradient, first-order ops only (no conv2d_grad_grad).

The weights, BatchNorm statistics and optimizer moments live in this step's own scope while it
trains; `load` copies them in from the eager networks and optimizers, `store` copies them
back (before samples, evaluation and checkpoints), so everything else in the project keeps
using the eager objects. Random numbers come from Paddle's generator in the eager step's order,
so a seeded run draws the same numbers on both paths. Losses and weights agree with the eager
step to float tolerance (tests/test_faststep.py), and tests/reference.py holds seeded runs of the
static step bit for bit.

methods.static_steps() imports this module, only when a static step is built, and only on the
Paddle releases the tests passed on (runtime.TESTED_PADDLE).

Example (what methods.Method.step does with --step static):
    step = Recording(method, shape=[128, 3, 64, 64], structure={})
    step.load(method.nets, method.opts)
    values, checks = step(real_batch, method.numbers(position))
    step.store(method.nets, method.opts)
"""
import contextlib
import functools
import os
from types import SimpleNamespace

import runtime  # noqa: F401  (before Paddle: thread and MKL settings)
import numpy as np
import paddle
import paddle.nn.functional as F
from paddle.base.backward import _create_op_desc_
from paddle.base.framework import Operator
from paddle.base.layer_helper import LayerHelper
from paddle.static.nn.control_flow import select_input

import augment
import checkpoint
import network
from balance import lecam_average, lecam_term, rmsprop_lr


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
    """paddle.sum in a legacy program."""
    dims = [] if axis is None else [axis] if isinstance(axis, int) else list(axis)
    return legacy_op("reduce_sum", {"X": x}, {"dim": dims, "keep_dim": keepdim, "reduce_all": axis is None},
                     dtype=x.dtype)


def _unary(op_type):
    def op(x, name=None):
        return unary(op_type, x)
    op.__name__ = op_type
    return op


# network.PADDLE_OPS' functions, which Paddle 3 builds only into PIR programs, as the legacy ops of the same names:
# the `ops` that the static step's networks and iteration are built with
LEGACY_OPS = SimpleNamespace(**{name: _unary(name) for name in ("tanh", "sigmoid", "sqrt", "rsqrt", "sign", "exp")},
                             matmul=_matmul, sum=_sum)


# ----------------------------------------------------------------------------- the steps

def require_static_step(arch):
    """ValueError unless network.ARCHITECTURES says `arch` has a static step."""
    if not network.architecture(arch).static_step:
        raise ValueError(f"no static step for {arch!r} (its network.ARCHITECTURES entry says so)")


class StaticStep:
    """A static program's machinery: its own scope and program, the random inputs it draws in the eager
    step's order, and copying weights and optimizer state between the program and the eager objects.

    `build` (Recording's) builds the program with `self.input` (a random input), `self.T` (augmentation),
    `self.networks`, and `self.register` (which networks and optimizers it holds), and sets `self.fetch`.
    """
    rewind_from = None    # the draw from which `rewind` holds the generator's state (numbers a run may give back)

    def __init__(self, batch, size, augment, build, onednn=ONEDNN_OPS):
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
            with paddle.static.program_guard(self.program, startup), paddle.utils.unique_name.guard():
                build()
            transposed_convs_as_convs(self.program, startup)
            for op in self.program.global_block().ops:
                if op.type in onednn:   # the ops that run on oneDNN
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
        nets = network.build(arch, form, mask, LEGACY_OPS, **arch_args)
        return {role: nets[role] if role in nets else
                network.build_net(arch, role.split("_")[0], arch_args, form, mask, LEGACY_OPS) for role in roles}

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
                shape, tricks = args
                targets = tricks.targets(paddle.zeros(shape), paddle.zeros(shape))
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
            checkpoint.ensure_optimizer_state(opt, nets[key])
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


LOGIC = (lambda x, y: logical("or", x, y), lambda x, y: logical("and", x, y), lambda x: logical("not", x))


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


def parameter_sums(*nets):
    """Per network, the sum of its parameters' means after the updates: not finite once any parameter is not."""
    return [paddle.add_n([p.mean() for p in net.parameters()]) for net in nets]


def set_rate(opt, rate):
    """`opt`'s learning rate in the program being built, from here on: the program variable `rate`."""
    opt._learning_rate_map[paddle.static.default_main_program()] = rate


class Recording(StaticStep):
    """A method's iteration (methods.Method.iteration), recorded as one static program on the CPU, and run.

    The program is built by running the method's own iteration with this object as its `run`, the eager
    step's methods.Eager answered with program ops: the same forwards and losses, on the program's variables.

    - noise, uniform numbers, dropout masks, label targets and T's numbers are inputs, which each run draws from
      Paddle's generator in the order the eager step draws them (StaticStep.draw);
    - the iteration's numbers (run.number: PG-GAN's alpha, G's average's beta, the adaptive L2's coefficient)
      are inputs fed from Method.numbers;
    - an update is its optimizer's ops. A skip rule decides inside the program from D's errors (balance.skip_flags
      on tensors), and an update it skips restores what it changed (`keeping`). A skipped phase (G's updates in
      a BCE iteration) also restores the BatchNorm statistics its forwards moved, and the numbers drawn for it
      go back to the generator, as if the eager step had never drawn them;
    - RMSProp's warm-up rate of each update of a counted network (Method.counter) is an input, picked in the
      program by how many of the iteration's earlier updates of that network were applied; the counters move
      after the run as the eager updates move them;
    - LeCam's averages before the iteration are inputs, and the new ones outputs;
    - WGAN-GP's input gradient is D.input_gradient's, first-order ops (progressive.input_gradient, "analytic").

    Example (what methods.Method.step does):
        step = Recording(method, [16, 3, 8, 8], {})
        step.load(method.nets, method.opts)
        values, checks = step(real, method.numbers(position))   # the iteration's values as numbers; weight sums
        step.store(method.nets, method.opts)
    """
    input_gradient = "analytic"
    ops = LEGACY_OPS

    def __init__(self, method, shape, structure, onednn=ONEDNN_OPS):
        require_static_step(method.arch)
        self.method = method
        self.updates = []         # (network, skip flag or None, skip flag of its phase or None) per update
        self.inputs = {}          # run.number's inputs by name
        self.rates = []           # (input name, network, its update's index among that network's + 1)
        self.grads = {}           # `backward`'s gradients so far, by parameter name
        self.phase_skip = self.skipped_phase = None
        self.lecam_averages = None
        super().__init__(shape[0], shape[-1], method.T, functools.partial(self._build, structure), onednn)

    def _build(self, structure):
        method = self.method
        self.nets = self.plain = self.networks(method.arch, method.args, method.recorded())
        self.opts = method.optimizers(self.nets)
        real = paddle.static.data("real", [self.batch, 3, self.size, self.size], "float32")
        out = method.iteration(self, real, **structure)
        # fetched: the iteration's values, then the weight sums, then the flags the counters and rewinding read
        self.layout, self.fetch = {}, []
        for key, value in out.items():
            if isinstance(value, list):
                self.layout[key] = [self._fetch(v) for v in value]
            else:
                self.layout[key] = self._fetch(value)
        self.checks = {key: self._fetch(s) for key, s in zip(self.opts, parameter_sums(*self.opts_nets()))}
        self.update_flags = [(key, self._fetch(skip), self._fetch(phase)) for key, skip, phase in self.updates]
        self.rewind_flag = self._fetch(self.skipped_phase)
        if self.lecam_averages is not None:
            self.lecam_fetch = [self._fetch(v) for v in self.lecam_averages]
        self.register(self.nets, self.opts)

    def opts_nets(self):
        return [self.nets[key] for key in self.opts]

    def _fetch(self, var):
        """The index of `var` among the fetched values (None for None)."""
        if var is None:
            return None
        self.fetch.append(var)
        return len(self.fetch) - 1

    # --- what the iteration asks (methods.Eager's calls)

    def noise(self, shape):
        return self.input("z", shape)

    def uniform(self, shape):
        return self.input("u", shape)

    def number(self, name):
        if name not in self.inputs:
            self.inputs[name] = paddle.static.data(name, [1], "float32")
        return self.inputs[name]

    def targets(self, tricks, logits_real, logits_fake):
        shape = list(logits_real.shape)
        targets = {k: paddle.static.data(f"labels{len(self.draws)}_{k}", shape, "float32") for k in ("real", "fake")}
        self.draws.append(("labels", {k: v.name for k, v in targets.items()}, (shape, tricks)))
        return targets["real"], targets["fake"]

    def decide(self, tricks, err_real, err_fake):
        """The rule's flags as booleans of the program, compared in float64 as the eager step compares the errors'
        float values."""
        if not tricks.skipping:
            return None, None
        errors = [paddle.cast(e, "float64").reshape([1]) for e in (err_real, err_fake)]
        return tricks.skips(*errors, logic=LOGIC)

    def lecam(self, out_real, out_fake):
        lecam = self.method.lecam
        if self.lecam_averages is None:   # the first term of the iteration: the averages and decay are inputs
            *averages, decay = (paddle.static.data(name, [1], "float32")
                                for name in ("lecam_real", "lecam_fake", "lecam_decay"))
        else:
            averages, decay = self.lecam_averages, lecam.decay
        self.lecam_averages = [lecam_average(a, out.mean().detach(), decay)
                               for a, out in zip(averages, (out_real, out_fake))]
        return lecam.weight * lecam_term(out_real, out_fake, *self.lecam_averages)

    def _rate(self, key):
        """With a counted RMSProp, this update's warm-up rate: an input of the rates after 0, 1, ... earlier applied
        updates of `key` in the iteration, picked by their count."""
        counter = self.method.counter
        if counter is None or counter.optimizer != "rmsprop":
            return
        earlier = [skip for k, skip, _ in self.updates if k == key]
        name = f"rates_{key}_{len(earlier)}"
        rates = paddle.static.data(name, [len(earlier) + 1], "float32")
        self.rates.append((name, key, len(earlier) + 1))
        if any(skip is not None for skip in earlier):
            rate = gather_count(rates, [logical("not", s) for s in earlier])
        else:
            rate = rates[len(earlier):] if earlier else rates
        set_rate(self.opts[key], rate)

    def update(self, keys, loss, skip=None):
        keys = (keys,) if isinstance(keys, str) else tuple(keys)
        if len(keys) > 1:   # one loss, several optimizers: one backward, then each one's step (methods.update)
            grads = self.opts[keys[0]].backward(loss, parameters=[p for k in keys for p in self.nets[k].parameters()])
            for key in keys:
                names = {p.name for p in self.nets[key].parameters()}
                apply_gradients(self.opts[key], [(p, g) for p, g in grads if p.name in names], skip)
                self.updates.append((key, skip, self.phase_skip))
            return
        key, = keys
        opt, parameters = self.opts[key], self.nets[key].parameters()
        self._rate(key)
        if skip is None:
            opt.minimize(loss, parameters=parameters)
        else:
            apply_gradients(opt, opt.backward(loss, parameters=parameters), skip)
        self.updates.append((key, skip, self.phase_skip))

    def backward(self, loss, keys):
        parameters = [p for k in keys for p in self.nets[k].parameters() if p.trainable]
        for p, g in self.opts[keys[0]].backward(loss, parameters=parameters):
            self.grads[p.name] = self.grads[p.name] + g if p.name in self.grads else g

    def scale(self, key, factor):
        for p in self.nets[key].parameters():
            if p.name in self.grads:
                self.grads[p.name] = self.grads[p.name] * factor

    def step(self, key, skip=None):
        self._rate(key)
        grads = [(p, self.grads[p.name]) for p in self.nets[key].parameters() if p.trainable]
        apply_gradients(self.opts[key], grads, skip)
        self.updates.append((key, skip, self.phase_skip))

    def phase(self, skip, body, keys):
        """`body()`'s ops, undone as a whole where `skip` is true: the updated networks' weights and optimizer
        state, and every network's BatchNorm statistics; the numbers drawn for it are given back after the run."""
        if skip is None:
            return body()
        self.rewind_from, self.skipped_phase = len(self.draws), skip
        kept = [v for key in keys for v in updated_state(self.opts[key], self.nets[key].parameters())]
        kept += [v for net in self.nets.values() for v in statistics(net)]
        self.phase_skip = skip
        with keeping(skip, kept):
            out = body()
        self.phase_skip = None
        return out

    @staticmethod
    def assign(target, value):
        paddle.assign(value, output=target)

    # --- running

    def __call__(self, real, numbers):
        """One iteration on the batch `real` with the iteration's `numbers` (Method.numbers): (the iteration's values
        as numbers, {network: weight sum}). Moves the counters, LeCam's averages and the generator as the eager step."""
        method, counter = self.method, self.method.counter
        feed = self.draw()
        feed.update({name: np.array([numbers[name]], np.float32) for name in self.inputs})
        for name, key, count in self.rates:   # the rates after 0, 1, ... count - 1 earlier updates of `key`
            before = counter.updates(key)
            feed[name] = np.array([rmsprop_lr(counter.lr, before + i) for i in range(count)], np.float32)
        if self.lecam_averages is not None:
            lecam = method.lecam
            feed.update({name: np.array([v], np.float32) for name, v in (
                ("lecam_real", lecam.real or 0.0), ("lecam_fake", lecam.fake or 0.0), ("lecam_decay", lecam.next_decay()))})
        got = self.run(real, feed)

        def value(i):
            return None if i is None else got[i]
        values = {k: [value(i) for i in v] if isinstance(v, list) else value(v) for k, v in self.layout.items()}
        if counter is not None:
            for key, skip, phase in self.update_flags:
                counter.count_updates(key, int(not value(skip) and not value(phase)))
        if self.lecam_averages is not None:
            method.lecam.real, method.lecam.fake = (got[i] for i in self.lecam_fetch)
        if value(self.rewind_flag):  # the eager step would not have drawn the skipped phase's numbers
            paddle.set_rng_state(self.rewind)
        return values, {key: got[i] for key, i in self.checks.items()}
