"""faststep.py: the static CPU training step computes what the eager step computes.

Each method's iteration is written once (methods.Method.iteration); the eager step runs it, and faststep.Recording
records it as a static program. These tests run one method on both steps from the same seed and compare the
numbers, the decisions, the counters and every weight, statistic and optimizer moment.
"""
import numpy as np
import paddle
import pytest

import checkpoint
import control
import faststep
import methods
import network
import train


# ----------------------------------------------------------------------------- a method on both steps

def twins(data, arch, size=16, batch=8, p=None, position=None, warm=False, **options):
    """{"static": method, "dygraph": method}: the method of `arch` for train.TrainConfig `options` (the tutorial's
    defaults for the rest) on each step, from the same seed; `p` sets augmentation's probability on both.

    With `warm`, both first take one eager iteration, so that the static step starts from real optimizer moments
    (loaded into its program): Adam's first update moves each weight by about lr * sign(gradient), and where a
    gradient is float noise its sign follows the order of the sums."""
    runs = {}
    for step in ("static", "dygraph"):
        cfg = train.TrainConfig(data=data, out="unused", arch=arch, batch_size=batch, step=step, device="cpu",
                                **options)
        cfg = train.resolve_defaults(cfg, {"embedded": False, "count": 100_000}, 1)
        paddle.seed(1)
        method = train.METHODS[network.architecture(arch).method](cfg, arch, size, control.Processes())
        if p is not None:
            method.T.p = p
        method.start(position or train.Position(), "cpu")
        assert method.path == step
        if warm:
            paddle.seed(5)
            method.path = "dygraph"
            method.step(batches(1, batch, size)[0], position or train.Position())
            method.path = step
        runs[step] = method
    return runs


def batches(count, batch=8, size=16):
    paddle.seed(0)
    return [paddle.uniform([batch, 3, size, size], min=-1, max=1) for _ in range(count)]


def step_both(runs, real, positions=None, seed=42):
    """Each method's steps on the batches `real` from the same seed: {step: [(stats, checks), ...]}; then each
    method's networks and optimizers up to date (sync), and what the generator would draw next."""
    results, following = {}, {}
    for step, method in runs.items():
        paddle.seed(seed)
        results[step] = [method.step(x, pos) for x, pos in zip(real, positions or [train.Position()] * len(real))]
        method.sync()
        following[step] = paddle.rand([8]).numpy()
    assert np.array_equal(following["static"], following["dygraph"])  # the same numbers drawn, none more
    return results


def assert_numbers_close(results, rel=1e-4, abs=1e-6):
    for i, ((e, e_checks), (g, g_checks)) in enumerate(zip(results["dygraph"], results["static"])):
        assert set(g) == set(e)
        for k in e:
            assert g[k] == pytest.approx(e[k], rel=rel, abs=abs), (i, k)
        assert list(g_checks) == list(e_checks)
        assert list(g_checks.values()) == pytest.approx(list(e_checks.values()), rel=1e-4)


def every_number(nets, opts):
    """Every number of the training state, keyed by structure: weights, BN statistics, optimizer moments."""
    out = {f"{key}.{k}": v.numpy().copy() for key, net in nets.items() for k, v in net.state_dict().items()}
    for key, opt in opts.items():
        for k, entries in checkpoint.optimizer_state(opt, nets[key]).items():
            out.update({f"opt_{key}.{k}.{name}": np.asarray(v).copy() for name, v in entries.items()})
    return out


def assert_states_close(runs, rtol=1e-4, atol=1e-6):
    eager, static = runs["dygraph"], runs["static"]
    want, have = every_number(eager.nets, eager.opts), every_number(static.nets, static.opts)
    assert set(want) == set(have) and any("moment" in k or "mean_square" in k for k in want)
    for k in want:
        np.testing.assert_allclose(have[k], want[k], rtol=rtol, atol=atol, err_msg=k)


PLAIN = dict(augment="none", ema=False, lecam=0.0)   # the BCE GANs without the built-in faces' recipe


@pytest.mark.parametrize("arch, d_steps, g_steps", [("dcgan", 1, 2), ("dcgan", 2, 1), ("dcgan", 1, 1),
                                                    ("torchblog", 1, 2), ("torchblog", 2, 1)])
def test_static_step_equals_the_dygraph_step(lfw8, arch, d_steps, g_steps):
    """The same losses and weights; torchblog's dropout drops the same units from the same seed."""
    runs = twins(lfw8, arch, width=8, d_steps=d_steps, g_steps=g_steps, **PLAIN, warm=True)
    assert_numbers_close(step_both(runs, batches(3)))
    assert_states_close(runs, atol=1e-5)  # float32 sums in another order: about 1e-6 relative after 3 iterations


@pytest.mark.parametrize("kind, p, lecam", [("diffaug", 0.0, 0.0), ("ada", 0.7, 0.0), ("none", 0.0, 0.5),
                                             ("ada", 0.3, 0.3)])
def test_static_step_equals_the_dygraph_step_with_augmentation_and_lecam(lfw8, kind, p, lecam):
    """The same T from the same seed, and LeCam's averages, on both paths (d_steps 2 draws more)."""
    runs = twins(lfw8, "dcgan", width=8, d_steps=2, g_steps=2, augment=kind, p=p, lecam=lecam, ema=False, warm=True)
    assert_numbers_close(step_both(runs, batches(3)))
    if lecam:
        static, eager = runs["static"].lecam, runs["dygraph"].lecam
        assert (static.real, static.fake) == pytest.approx((eager.real, eager.fake), rel=1e-4)
    assert_states_close(runs, atol=1e-5)  # Adam moves a weight whose gradient is ~0 by up to lr: float order shows


@pytest.mark.parametrize("arch, labels", [("dcgan", dict(real_label=0.9)),
                                          ("torchblog", dict(real_label=0.9, label_jitter=0.05, flip_labels=0.2))])
def test_static_step_equals_the_dygraph_step_with_label_tricks(lfw8, arch, labels):
    """Soft, jittered and flipped targets drawn from the same seed in the eager step's order (after the dropout)."""
    runs = twins(lfw8, arch, width=8, **labels, **PLAIN, warm=True)
    assert_numbers_close(step_both(runs, batches(3)))
    assert_states_close(runs, atol=1e-5)


def assert_adam_states_close(have, want, lr, atol=1e-6, scale=1e-4):
    """Every number of two states after one Adam update equal to float tolerance, except that up to 1 in 1,000
    elements of a large weight may differ by up to 2.1 lr: Adam's first update moves each weight by about
    lr * sign(gradient), and where a gradient is float noise its sign depends on the order of the sums.
    Float tolerance is relative to each tensor's scale too: an element near 0 of a BatchNorm mean is a sum of
    large terms, whose rounding follows the convolution kernel's order (oneDNN's differs by CPU): `scale` of
    the tensor's largest element."""
    assert set(want) <= set(have)
    for k in want:
        atol_k = max(atol, scale * float(np.abs(want[k]).max(initial=0.0)))
        close = np.isclose(have[k], want[k], rtol=1e-4, atol=atol_k)
        if k.split(".")[-1] == "weight" and close.size > 1000:
            assert close.mean() >= 0.999 and np.abs(have[k] - want[k]).max() <= 2.1 * lr, k
        else:
            np.testing.assert_allclose(have[k], want[k], rtol=1e-4, atol=atol_k, err_msg=k)


@pytest.mark.parametrize("arch, size, batch", [("conv128", 128, 2)])
def test_static_step_equals_the_dygraph_step_for_the_series_models(lfw8, arch, size, batch):
    """"Make Your Own GAN"'s 128-px conv GAN (its MLP has no static step), with its Adam (lr 1e-4, PyTorch's
    betas), one D and one G update; its spatial dropout from the same seed.

    After the first iteration every number of the state is compared. Adam's first update moves each weight
    by about lr * sign(gradient): where a gradient is float noise (conv128 has 4.7M weights) its sign may
    differ between the two float orders, and that weight then differs by 2 lr. So a few conv128 weights
    (at most 1 in 1,000) may differ by up to 2.1 lr; every other weight, statistic and moment is equal to
    float tolerance. The losses of three iterations are compared too."""
    runs = twins(lfw8, arch, size=size, batch=batch, **PLAIN)
    assert (runs["static"].cfg.lr, runs["static"].cfg.beta1, runs["static"].cfg.g_steps) == (1e-4, 0.9, 1)
    real = batches(3, batch, size)
    first = step_both(runs, real[:1])
    eager, static = runs["dygraph"], runs["static"]
    # conv128's gradients sum its 8x8 convolutions of 256 channels, through BatchNorm of 2 images, in oneDNN's order
    # and in MKL's (whose order follows the threads the process has used): an element that is a sum of cancelling
    # terms differs by up to about 1e-3 of its tensor's largest (seen in G's first moments)
    assert_adam_states_close(every_number(static.nets, static.opts), every_number(eager.nets, eager.opts), 1e-4,
                             scale=5e-3 if arch == "conv128" else 1e-4)
    rest = step_both(runs, real[1:], seed=43)
    assert_numbers_close({k: first[k] + rest[k] for k in first})


def test_vae_static_step_equals_the_eager_step(lfw8):
    """The same noise, losses, weights and Adam state (one backward, both networks stepped)."""
    runs = twins(lfw8, "vae", width=8, warm=True)
    assert_numbers_close(step_both(runs, batches(3)), rel=1e-5)
    assert_states_close(runs)


@pytest.mark.parametrize("options, iterations, fired", [
    (dict(balance="equilibrium", margin=0.35, optimizer="rmsprop"), 3, ""),            # the method's defaults
    (dict(balance="equilibrium", margin=0.01, optimizer="rmsprop", lr=0.01), 5, "DG"),  # both rules fire
    (dict(balance="margin", margin=0.3, optimizer="adam", d_reconstructions=True, augment="ada", p=0.6), 3, ""),
    (dict(balance="none", optimizer="rmsprop", augment="diffaug", p=0.0), 3, ""),
])
def test_vaegan_static_step_equals_the_eager_step(lfw8, options, iterations, fired):
    """The same noise, T, decisions, losses, weights and optimizer state, with G's gradient gamma L_llike's plus
    the reversed GAN loss's."""
    runs = twins(lfw8, "vaegan", size=8, width=8, **options)
    assert_numbers_close(step_both(runs, batches(iterations, size=8)))
    eager, static = runs["dygraph"], runs["static"]
    assert (static.tricks.d_skips, static.tricks.g_skips) == (eager.tricks.d_skips, eager.tricks.g_skips)
    if fired:
        assert eager.tricks.d_skips > 0 and eager.tricks.g_skips > 0
    assert_states_close(runs)


COUNTERS = ("d_skips", "g_skips", "d_updates", "g_updates", "coef_l2")


@pytest.mark.parametrize("arch, options, counters, iterations, fired", [
    # G's phase skipped in some iterations, not in others (with 2 D steps the first one's word counts)
    ("dcgan", dict(balance="margin", margin=0.3, d_steps=2, g_steps=1, lr=2e-3), {}, 4, "G"),
    ("dcgan", dict(balance="equilibrium", margin=0.02, d_steps=2, g_steps=2, lr=2e-3), {}, 4, "DG"),
    # RMSProp across its warm-up's step at 10 updates: each D step's rate follows the earlier ones that updated
    ("dcgan", dict(balance="equilibrium", margin=0.02, optimizer="rmsprop", d_steps=2, g_steps=2, lr=1e-2),
     dict(d_updates=9, g_updates=9), 4, "DG"),
    ("dcgan", dict(balance="l2", real_label=0.9, d_steps=1, g_steps=2), dict(coef_l2=0.05), 3, ""),
    # the dropout masks drawn for a skipped G phase go back to the generator
    ("torchblog", dict(balance="margin", margin=0.45, optimizer="rmsprop", d_steps=2, g_steps=2, lr=1e-2), {}, 8,
     "G"),
    ("torchblog", dict(balance="l2", optimizer="rmsprop", real_label=0.9, flip_labels=0.1, d_steps=1, g_steps=2,
                       lr=1e-3), dict(coef_l2=0.05), 3, ""),
])
def test_static_step_equals_the_dygraph_step_with_balancing(lfw8, arch, options, counters, iterations, fired):
    """The skip rules, adaptive L2 and RMSProp's warm-up: the same decisions, counters, losses, weights and
    optimizer state, and the generator left where the eager step leaves it."""
    runs = twins(lfw8, arch, width=8, **options, **PLAIN, warm=True)
    for method in runs.values():
        for k, v in counters.items():
            setattr(method.tricks, k, v)
    results = step_both(runs, batches(iterations))
    eager, static = runs["dygraph"].tricks, runs["static"].tricks
    after = {k: getattr(eager, k) for k in COUNTERS}
    assert {k: getattr(static, k) for k in COUNTERS} == after
    if "D" in fired:
        assert after["d_skips"] > 0
    if "G" in fired:  # skipped in some iterations and not in others
        assert after["g_skips"] > 0 and after["g_updates"] > counters.get("g_updates", 0)
    if options["balance"] == "l2":  # the coefficient moved, and the penalty was in D's loss
        assert after["coef_l2"] != counters["coef_l2"]
    assert_numbers_close(results)
    eager, static = runs["dygraph"], runs["static"]   # learning rates up to 1e-2: Adam's sign on noise shows
    assert_adam_states_close(every_number(static.nets, static.opts), every_number(eager.nets, eager.opts),
                             options.get("lr", 2e-4), atol=1e-5)


def test_the_legacy_ops_are_paddles_functions_of_the_same_names_and_numbers():
    """faststep.LEGACY_OPS, which the static program's networks and iteration call where the eager ones call
    network.PADDLE_OPS: every function, and each one's numbers in a legacy program equal to Paddle's own."""
    assert set(vars(faststep.LEGACY_OPS)) == set(vars(network.PADDLE_OPS))
    rng = np.random.default_rng(0)
    x_value = rng.uniform(0.1, 2.0, (3, 4)).astype(np.float32)
    calls = {name: (lambda f: f(x)) for name in ("tanh", "sigmoid", "sqrt", "rsqrt", "sign", "exp")}
    calls["matmul"] = lambda f: f(x, x, transpose_y=True)
    calls["sum"] = lambda f: f(x, axis=1)
    with paddle.pir_utils.OldIrGuard():
        main, startup = paddle.static.Program(), paddle.static.Program()
        with paddle.static.program_guard(main, startup):
            x = paddle.static.data("x", [3, 4], "float32")
            fetch = [call(getattr(faststep.LEGACY_OPS, name)) for name, call in calls.items()]
        exe = paddle.static.Executor(paddle.CPUPlace())
        got = exe.run(main, feed={"x": x_value}, fetch_list=fetch)
    x = paddle.to_tensor(x_value)
    for (name, call), value in zip(calls.items(), got):
        np.testing.assert_allclose(value, call(getattr(network.PADDLE_OPS, name)).numpy(), rtol=1e-6, err_msg=name)


def test_store_then_load_round_trips_and_training_continues_in_dygraph(lfw8):
    method = twins(lfw8, "dcgan", width=8, batch=4, **PLAIN)["static"]
    method.step(batches(1, 4)[0], train.Position())
    method.sync()
    first = every_number(method.nets, method.opts)
    method.fast.load(method.nets, method.opts)
    method.fast.store(method.nets, method.opts)
    for k, v in every_number(method.nets, method.opts).items():
        np.testing.assert_array_equal(v, first[k], err_msg=k)
    method.path, method.fast = "dygraph", None   # the stored moments are what the eager step continues from
    method.step(batches(1, 4)[0], train.Position())
    after = every_number(method.nets, method.opts)
    moment = "opt_G.main.0.conv.weight.moment1"
    assert moment in first and not np.array_equal(after[moment], first[moment])

def test_dcgans_static_form_computes_the_first_layer_as_a_product_with_the_references_numbers():
    paddle.seed(0)
    ref = network.DCGANGenerator(size=16, width=8)
    fast = network.build_net("dcgan", "G", dict(size=16, z_dim=100, width=8), form="static")
    assert fast.main[0].dense_input and not ref.main[0].dense_input and not fast.main[1].dense_input
    fast.set_state_dict(ref.state_dict())
    z = paddle.randn([5, 100])
    np.testing.assert_allclose(fast(z).numpy(), ref(z).numpy(), rtol=1e-5, atol=1e-6)
    x = paddle.randn([2, 100, 3, 3])  # not a 1x1 input: the convolution itself
    np.testing.assert_array_equal(fast.main[0](x).numpy(), ref.main[0](x).numpy())


def test_nearest_upsampling_as_a_broadcast_equals_interpolate():
    x = paddle.randn([3, 5, 4, 6])
    x.stop_gradient = False
    weights = paddle.randn([3, 5, 8, 12])  # a gradient that differs per output pixel
    grads = []
    for up in (lambda t: paddle.nn.functional.interpolate(t, scale_factor=2, mode="nearest"), network.nearest_up2):
        y = up(x)
        (y * weights).sum().backward()
        grads.append((y.numpy(), x.grad.numpy().copy()))
        x.clear_gradient()
    np.testing.assert_array_equal(grads[1][0], grads[0][0])
    np.testing.assert_allclose(grads[1][1], grads[0][1], rtol=1e-6, atol=1e-6)  # 4 terms summed in another order


@pytest.mark.parametrize("shape", [[3, 5, 4, 6], [2, 1, 8, 8], [16, 16, 2, 2]])
def test_resampling_by_products_equals_interpolate_and_pooling(shape):
    """PG-GAN's static step upsamples and pools by matrix products: upsampling gives exactly interpolate's numbers,
    pooling avg_pool2d's to float rounding; both gradients to float rounding (sums in another order)."""
    pairs = [(network.upsample, network.upsample_by_products, True),
             (network.downsample, network.downsample_by_products, False)]
    for plain, products, exact in pairs:
        x = paddle.randn(shape)
        x.stop_gradient = False
        out_shape = plain(x).shape
        weights = paddle.randn(out_shape)   # a gradient that differs per output pixel
        results = []
        for f in (plain, products):
            y = f(x)
            (y * weights).sum().backward()
            results.append((y.numpy(), x.grad.numpy().copy()))
            x.clear_gradient()
        assert results[1][0].shape == results[0][0].shape == tuple(out_shape)
        if exact:
            np.testing.assert_array_equal(results[1][0], results[0][0])
        np.testing.assert_allclose(results[1][0], results[0][0], rtol=1e-6, atol=1e-6)
        np.testing.assert_allclose(results[1][1], results[0][1], rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("form", ["static", "export"])
def test_pggan_forms_are_built_by_argument_and_compute_the_references_numbers(form):
    """PG-GAN's fast forms are networks built with form=..., beside the reference: nothing else changes, and G and D
    in either form give the reference's outputs and D's input gradient to float rounding."""
    args = dict(size=16, z_dim=8, fmap_base=32, fmap_max=8)
    paddle.seed(2)
    nets = network.build("pggan", **args)
    fast = network.build("pggan", form, **args)
    assert nets["G"].form == "ref" and fast["G"].form == fast["D"].form == form
    assert network.upsample is network.PGGAN_FORMS["ref"]["upsample"]   # the module's functions stay what they are
    z, img = paddle.randn([4, 8]), paddle.randn([4, 3, 16, 16])
    for role in ("G", "D"):
        fast[role].set_state_dict(nets[role].state_dict())
    for net in (*nets.values(), *fast.values()):
        net.set_stage(16, 0.5)
    np.testing.assert_allclose(fast["G"](z).numpy(), nets["G"](z).numpy(), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(fast["D"](img).numpy(), nets["D"](img).numpy(), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(fast["D"].input_gradient(img).numpy(), nets["D"].input_gradient(img).numpy(),
                               rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="form 'fast' is not one of ref, static, export"):
        network.build_net("pggan", "G", args, form="fast")


@pytest.mark.parametrize("make, conv2d", [
    (lambda: network.EqualizedConv2D(5, 4),
     lambda layer, t: paddle.nn.functional.conv2d(t, layer.weight * layer.scale, layer.bias, padding=1)),
    (lambda: network.ConvBlock(5, 4, 5, stride=1, padding=2, norm=False, act=None, bias=True),   # the Torch blog's D
     lambda layer, t: paddle.nn.Conv2D.forward(layer.conv, t))])
def test_convolutions_add_their_bias_as_conv2d_does(make, conv2d):
    """EqualizedConv2D and ConvBlock add their bias after the convolution (Paddle's faster broadcast): the output
    and every gradient as Paddle's convolution with its own bias."""
    paddle.seed(4)
    layer = make()
    params = [layer.weight, layer.bias] if hasattr(layer, "scale") else [layer.conv.weight, layer.conv.bias]
    params[1].set_value(paddle.randn([4]))
    x = paddle.randn([3, 5, 6, 7])
    x.stop_gradient = False
    weights = paddle.randn([3, 4, 6, 7])
    results = []
    for form in (layer, lambda t: conv2d(layer, t)):
        y = form(x)
        (y * weights).sum().backward()
        results.append([t.numpy().copy() for t in (y, x.grad, *(p.grad for p in params))])
        for t in (x, *params):
            t.clear_gradient()
    for ours, paddles in zip(*results):
        np.testing.assert_allclose(ours, paddles, rtol=1e-5, atol=1e-5 * np.abs(paddles).max())


@pytest.mark.parametrize("make, fused, plain", [
    (lambda: network.EqualizedConv2D(5, 4), network.up_conv_transposed, network.up_conv),      # PG-GAN's G, 3x3
    (lambda: paddle.nn.Conv2D(5, 4, 5, padding=2), network.conv_of_upsampled,                  # the Torch blog's, 5x5
     lambda conv, t: conv(network.upsample(t)))])
def test_upsampling_then_convolution_as_one_transposed_convolution_equals_both(make, fused, plain):
    """network.up_conv_transposed and conv_of_upsampled (exported generators): the output, and the gradients of
    x, the weights and the bias."""
    paddle.seed(3)
    conv = make()
    conv.bias.set_value(paddle.randn([4]))
    x = paddle.randn([2, 5, 3, 7])
    x.stop_gradient = False
    weights = paddle.randn([2, 4, 6, 14])
    results = []
    for form in (plain, fused):
        y = form(conv, x)
        (y * weights).sum().backward()
        results.append([t.numpy().copy() for t in (y, x.grad, conv.weight.grad, conv.bias.grad)])
        for t in (x, conv.weight, conv.bias):
            t.clear_gradient()
    for ours, reference in zip(results[1], results[0]):
        assert ours.shape == reference.shape
        np.testing.assert_allclose(ours, reference, rtol=1e-4, atol=1e-4 * np.abs(reference).max())


def transposed_conv_program(x_shape, weight_shape, rewrite, **options):
    """A static program of one F.conv2d_transpose and the gradients of sum(y * r) for x and the weight; with
    `rewrite`, after faststep.transposed_convs_as_convs. Returns (program, startup, y, [y, grad x, grad weight])."""
    with paddle.pir_utils.OldIrGuard():
        main, startup = paddle.static.Program(), paddle.static.Program()
        with paddle.static.program_guard(main, startup), paddle.utils.unique_name.guard():
            x = paddle.static.data("x", x_shape, "float32")
            x.stop_gradient = False
            weight = paddle.create_parameter(weight_shape, "float32")
            y = paddle.nn.functional.conv2d_transpose(x, weight, **options)
            r = paddle.static.data("r", y.shape, "float32")
            fetch = [y, *paddle.static.gradients(faststep.LEGACY_OPS.sum(y * r), [x, weight])]
        if rewrite:
            faststep.transposed_convs_as_convs(main, startup)
        for op in main.global_block().ops:
            if op.type in faststep.ONEDNN_OPS:
                op._set_attr("use_mkldnn", True)
    return main, startup, fetch


@pytest.mark.parametrize("x_shape, weight_shape, options", [
    ([3, 6, 4, 5], [6, 4, 4, 4], dict(stride=2, padding=1)),                 # DCGAN's G
    ([3, 6, 4, 5], [6, 4, 6, 6], dict(stride=2, padding=2)),                 # the Torch blog's fused upsampling conv
    ([3, 6, 4, 5], [6, 4, 3, 3], dict(stride=1, padding=1)),
    ([3, 6, 4, 5], [6, 2, 3, 3], dict(stride=2, padding=[1, 0], groups=3)),
    ([3, 6, 4, 5], [6, 4, 3, 3], dict(stride=2, padding=[0, 1, 1, 0], dilation=2)),
    ([3, 6, 4, 5], [6, 4, 3, 3], dict(stride=2, padding=1, output_padding=1)),   # no conv2d gives its shape back
])
def test_transposed_convolutions_as_convolutions_equal_them(x_shape, weight_shape, options):
    """faststep.transposed_convs_as_convs: conv2d_transpose and its gradient as conv2d and conv2d_grad ops on
    oneDNN give the output and the gradients of the input and the weight."""
    rng = np.random.default_rng(0)
    results, types, weight_value, feed = [], [], rng.standard_normal(weight_shape).astype(np.float32), {}
    for rewrite in (False, True):
        main, startup, fetch = transposed_conv_program(x_shape, weight_shape, rewrite, **options)
        types.append({op.type for op in main.global_block().ops})
        feed = feed or {"x": rng.standard_normal(x_shape).astype(np.float32),
                        "r": rng.standard_normal(fetch[0].shape).astype(np.float32)}
        scope = paddle.static.Scope()
        with paddle.pir_utils.OldIrGuard(), paddle.static.scope_guard(scope):
            exe = paddle.static.Executor(paddle.CPUPlace())
            exe.run(startup)
            weight = main.global_block().all_parameters()[0]
            scope.find_var(weight.name).get_tensor().set(weight_value, paddle.CPUPlace())
            results.append(exe.run(main, feed=feed, fetch_list=fetch))
    transposed = {"conv2d_transpose", "conv2d_transpose_grad"}
    assert transposed <= types[0]
    assert types[1] & transposed == (transposed if "output_padding" in options else set())
    for ours, reference in zip(results[1], results[0]):
        assert ours.shape == reference.shape
        np.testing.assert_allclose(ours, reference, rtol=1e-4, atol=1e-5 * np.abs(reference).max())


@pytest.mark.parametrize("form", ["static", "export"])
def test_the_torch_blogs_fused_form_is_built_by_argument_and_computes_the_references_numbers(form):
    """The Torch blog's G in its static and export forms: each upsampling + 5x5 convolution one transposed
    convolution (no nn.Upsample left), the same parameters, and the reference's faces and gradients to rounding."""
    args = dict(size=32, z_dim=16, width=8)
    paddle.seed(5)
    ref, fused = network.build_net("torchblog", "G", args), network.build_net("torchblog", "G", args, form)
    assert fused.form == form and list(fused.state_dict()) == list(ref.state_dict())
    assert not [layer for layer in fused.sublayers() if isinstance(layer, paddle.nn.Upsample)]
    assert sum(isinstance(b, network.ConvBlock) and b.upsampled_input for b in fused.sublayers()) == 3
    fused.set_state_dict(ref.state_dict())
    z = paddle.randn([4, 16])
    outputs = []
    for G in (ref, fused):
        y = G(z)
        (y * paddle.linspace(-1, 1, y.size).reshape(y.shape)).sum().backward()
        outputs.append((y.numpy(), [p.grad.numpy() for p in G.parameters() if p.grad is not None]))
    np.testing.assert_allclose(outputs[1][0], outputs[0][0], rtol=1e-5, atol=1e-5)
    for ours, reference in zip(outputs[1][1], outputs[0][1]):
        np.testing.assert_allclose(ours, reference, rtol=1e-4, atol=1e-4 * np.abs(reference).max())
    D = network.build_net("torchblog", "D", args, form)   # a network without forms is built as it is
    assert not hasattr(D, "form")


@pytest.mark.parametrize("shape", [[4, 6, 5, 5], [4, 6]])
def test_pixel_norm_by_convolution_equals_pixel_norm(shape):
    x = paddle.randn(shape)
    np.testing.assert_allclose(network.pixel_norm_by_conv(x).numpy(), network.pixel_norm(x).numpy(), rtol=1e-5,
                               atol=1e-6)


@pytest.mark.parametrize("channels", [False, True])
def test_dropout_from_a_fed_mask_drops_what_paddle_drops(channels):
    """The static step's dropout (network.FedDropout): a mask drawn from the same generator, fed in; forward and
    backward equal Paddle's own dropout's."""
    x = paddle.randn([6, 4, 5, 5])
    x.stop_gradient = False
    weights = paddle.randn([6, 4, 5, 5])
    results = []
    p = 0.2 if channels else 0.5
    fed = lambda shape, p: paddle.to_tensor(faststep.dropout_mask(shape, p))  # noqa: E731  (the step's draw)
    for layer in (network.dropout(p, channels), network.dropout(p, channels, mask=fed)):
        paddle.seed(3)
        y = layer(x)
        (y * weights).sum().backward()
        results.append((y.numpy(), x.grad.numpy().copy()))
        x.clear_gradient()
    assert isinstance(layer, network.FedDropout)
    np.testing.assert_array_equal(results[1][0], results[0][0])
    np.testing.assert_array_equal(results[1][1], results[0][1])
    zeros = (results[0][0] == 0).mean()
    assert 0.05 < zeros < 0.7 and np.any(results[0][0] != 0)


def test_a_batch_of_another_size_is_refused(lfw8):
    method = twins(lfw8, "dcgan", width=8, batch=4, **PLAIN)["static"]
    step = method.program([4, 3, 16, 16], {})
    with pytest.raises(ValueError, match="batches of 4"):
        step(paddle.uniform([3, 3, 16, 16], min=-1, max=1), {})


def test_static_steps_free_memory_in_batches_unless_the_user_chose(lfw8, monkeypatch):
    """One free per op woke Paddle's collector thread once per op (the PG-GAN speed levels): the static step
    sets a batch size for frees, and leaves a user's own FLAGS_eager_delete_tensor_gb alone."""
    assert faststep.executor_memory_flags({}) == {"FLAGS_eager_delete_tensor_gb": faststep.FREE_IN_BATCHES_GB}
    assert faststep.executor_memory_flags({"FLAGS_eager_delete_tensor_gb": "0"}) == {}
    assert 0 < faststep.FREE_IN_BATCHES_GB <= 1   # bounded: at most this many GiB held back
    monkeypatch.delenv("FLAGS_eager_delete_tensor_gb", raising=False)
    paddle.set_flags({"FLAGS_eager_delete_tensor_gb": 0.0})
    twins(lfw8, "dcgan", width=8, batch=4, **PLAIN)["static"].program([4, 3, 16, 16], {})
    assert paddle.get_flags("FLAGS_eager_delete_tensor_gb")["FLAGS_eager_delete_tensor_gb"] == \
        pytest.approx(faststep.FREE_IN_BATCHES_GB)


@pytest.mark.parametrize("name, device, arch, expected", [
    ("auto", "cpu", "dcgan", "static"),
    ("auto", "gpu", "dcgan", "dygraph"),
    ("dygraph", "cpu", "dcgan", "dygraph"),
    ("static", "cpu", "dcgan", "static"),
    ("static", "gpu", "dcgan", "--step static runs on the CPU only"),
])
def test_choose_step(name, device, arch, expected):
    if expected.startswith("--"):
        with pytest.raises(train.ConfigError, match=expected):
            methods.choose_step(name, device, arch, 1)
    else:
        assert methods.choose_step(name, device, arch, 1) == expected


PLAIN = dict(augment="none", ema=False, lecam=0.0)   # the BCE GANs without the built-in faces' recipe


@pytest.mark.parametrize("arch, options", [
    ("dcgan", PLAIN), ("torchblog", PLAIN),
    ("torchblog", dict(PLAIN, balance="margin", optimizer="rmsprop", real_label=0.9)),
    ("vae", {}), ("vaegan", {})])
def test_training_runs_on_either_step_to_the_same_weights(lfw8, tmp_path, arch, options):
    runs = {}
    for step in ("static", "dygraph"):
        given = dict(dict(batch_size=16, width=8), **options)
        cfg = train.TrainConfig(data=lfw8, out=str(tmp_path / step), epochs=1, epoch_images=64, sample_every=100,
                                device="cpu", step=step, arch=arch, **given)
        runs[step] = checkpoint.load(train.train(cfg))
    nets = network.architecture(arch).networks
    for part in nets:
        for k, v in runs["dygraph"][part].items():
            np.testing.assert_allclose(runs["static"][part][k], v, rtol=1e-3, atol=1e-5, err_msg=k)
    for opt in (f"opt_{name}" for name in nets):  # the same optimizer state, keyed by the networks' structure
        assert runs["static"][opt].keys() == runs["dygraph"][opt].keys() and runs["dygraph"][opt]
        for k, entries in runs["dygraph"][opt].items():
            assert set(entries) == set(runs["static"][opt][k])
            for name, v in entries.items():
                np.testing.assert_allclose(runs["static"][opt][k][name], v, rtol=1e-3, atol=1e-7, err_msg=(k, name))
    assert runs["static"]["method"] == runs["dygraph"]["method"]  # counters: updates, skips, L2 coefficient


# ----------------------------------------------------------------------------- PG-GAN's WGAN-GP step

PGGAN_ARGS = dict(size=16, z_dim=32, fmap_base=64, fmap_max=16)


@pytest.fixture
def float64():
    paddle.set_default_dtype("float64")
    yield "float64"
    paddle.set_default_dtype("float32")


@pytest.mark.parametrize("res, alpha, zero_biases",
                         [(16, 1.0, False), (16, 0.3, False), (8, 0.5, True), (4, 1.0, True)])
def test_discriminator_input_gradient_equals_autograd_to_second_order(res, alpha, zero_biases, float64):
    """PGGANDiscriminator.input_gradient (WGAN-GP's gradient without second derivatives of convolutions) against
    paddle.grad: its value, and the gradient of the sum of its squares (a penalty) for every weight of D. In
    float64, where they agree to 1e-12 (in float32 to rounding, up to 2e-3 of a norm where terms cancel). With
    zero biases and a blank band in the images, pre-activations are exactly 0, where Paddle's leaky ReLU has
    slope 1 but its second derivative takes 0.2; input_gradient follows autograd there too."""
    paddle.seed(1)
    D = network.build_net("pggan", "D", PGGAN_ARGS)
    if not zero_biases:
        for p in D.parameters():
            if len(p.shape) == 1:
                p.set_value(paddle.randn(p.shape, dtype=float64) * 0.3)
    D.set_stage(res, alpha)
    x = paddle.randn([8, 3, res, res], dtype=float64)
    x[:, :, : res // 2] = 0.0
    x.stop_gradient = False
    results = []
    for gradient in (lambda: paddle.grad(D(x).sum(), x, create_graph=True)[0], lambda: D.input_gradient(x)):
        g = gradient()
        second = paddle.grad((g * g).sum(), D.parameters(), allow_unused=True)
        results.append([g.numpy()] + [s.numpy() for s in second if s is not None])
    assert len(results[0]) == len(results[1]) > 4
    for ours, autograd in zip(results[1], results[0]):
        np.testing.assert_allclose(ours, autograd, rtol=1e-9, atol=1e-10 * np.abs(autograd).max())


@pytest.mark.parametrize("seen, res, alpha, kind, p, lecam", [
    (32, 16, 1.0, "none", 0.0, 0.0), (26, 16, 0.25, "none", 0.0, 0.0), (12, 8, 0.5, "none", 0.0, 0.0),
    (32, 16, 1.0, "ada", 0.6, 0.3), (16, 8, 1.0, "diffaug", 0.0, 0.0)])
def test_progressive_static_step_equals_the_eager_iteration(lfw8, seen, res, alpha, kind, p, lecam):
    """WGAN-GP through the double backward, the fade's alpha, T, LeCam and G's average: the same numbers.

    After one iteration every weight, average and Adam moment agrees to float rounding (but for Adam's sign
    on noise-sized gradients, assert_adam_states_close: oneDNN's convolutions sum in another order). Later iterations
    agree less tightly, and not from the program: Adam with beta1 = 0 moves a weight whose gradient is
    rounding noise (D's output bias in WGAN's loss) by a full learning rate either way, so only the losses
    are compared there, to 5e-3."""
    position = train.Position(images_seen=seen)   # phases of 8 images: 4x4, then 8x8 fading in, ...
    runs = twins(lfw8, "pggan", batch=8, p=p, position=position, augment=kind, lecam=lecam, phase_kimg=0.008,
                 batch_sizes="4:8", **{k: v for k, v in PGGAN_ARGS.items() if k != "size"})
    assert runs["static"].at(seen)[:2] == (res, alpha)
    positions = [train.Position(images_seen=seen, iteration=i) for i in range(3)]
    first = step_both(runs, batches(1), positions[:1])
    assert_numbers_close(first, rel=1e-4, abs=1e-5)
    eager, static = runs["dygraph"], runs["static"]
    want, have = every_number(eager.nets, eager.opts), every_number(static.nets, static.opts)
    assert any(".moment2" in k for k in want) and any(k.startswith("G_ema") for k in want)
    assert_adam_states_close(have, want, 1e-3, atol=1e-5)
    rest = step_both(runs, batches(2), positions[1:], seed=43)
    assert_numbers_close(rest, rel=5e-3, abs=5e-3)
    assert all(stats["res"] == res and stats["alpha"] == alpha for stats, _ in first["static"] + rest["static"])
