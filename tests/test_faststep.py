"""faststep.py: the static CPU training step computes what the dygraph step computes."""
import numpy as np
import paddle
import pytest

import balance
import checkpoint
import control
import faststep
import methods
import network
import progressive
import train
from augment import Augment
from balance import LeCam, Tricks


def setup(seed=1, size=16, width=8, arch="dcgan"):
    paddle.seed(seed)
    G, D = network.build(arch, size=size, width=width).values()
    adam = dict(learning_rate=2e-4, beta1=0.5, beta2=0.999)
    return G, D, paddle.optimizer.Adam(parameters=G.parameters(), **adam), paddle.optimizer.Adam(parameters=D.parameters(), **adam)


def held(G, D, opt_G, opt_D):
    """FastStep.load's and store's arguments: {key: network}, {key: optimizer}."""
    return {"G": G, "D": D}, {"G": opt_G, "D": opt_D}


def state(G, D, opt_G, opt_D):
    """Every number of the training state, keyed by structure: weights, BN statistics, Adam moments."""
    out = {}
    for key, net, opt in (("G", G, opt_G), ("D", D, opt_D)):
        names = {}
        for k, v in net.state_dict().items():
            out[f"{key}.{k}"] = v.numpy().copy()
            names[v.name] = k
        for k, v in opt.state_dict().items():
            if hasattr(v, "numpy"):
                base = max((n for n in names if k.startswith(n + "_")), key=len)
                out[f"{key}.{names[base]}.{k[len(base) + 1:]}"] = v.numpy().copy()
    return out


@pytest.mark.parametrize("arch, d_steps, g_steps", [("dcgan", 1, 2), ("dcgan", 2, 1), ("dcgan", 1, 1),
                                                    ("torchblog", 1, 2), ("torchblog", 2, 1)])
def test_static_step_equals_the_dygraph_step(arch, d_steps, g_steps):
    """The same losses and weights; torchblog's dropout drops the same units from the same seed."""
    batch = 8
    real = [paddle.uniform([batch, 3, 16, 16], min=-1, max=1) for _ in range(3)]
    plain, static = setup(arch=arch), setup(arch=arch)
    # one dygraph iteration on both first, so `load` carries real Adam moments across
    for objects in (plain, static):
        paddle.seed(5)
        methods.bce_iteration(*objects, real[0], 100, d_steps, g_steps, Tricks())
    step = faststep.FastStep(arch, plain[0].args, batch, 2e-4, 0.5, 0.999, d_steps, g_steps)
    step.load(*held(*static))
    for i, x in enumerate(real):
        paddle.seed(10 + i)
        expected = methods.bce_iteration(*plain, x, 100, d_steps, g_steps, Tricks())
        paddle.seed(10 + i)
        got = step(x)
        checks = [got.pop("G_check"), got.pop("D_check")]
        assert checks == pytest.approx(list(control.weight_checks({"G": plain[0], "D": plain[1]}).values()), rel=1e-4)
        assert set(got) == set(expected)
        for k in expected:
            assert got[k] == pytest.approx(expected[k], rel=1e-4), (i, k)
    step.store(*held(*static))
    want, have = state(*plain), state(*static)
    assert set(want) == set(have) and any(k.endswith("moment2_0") for k in want)
    for k in want:  # float32 sums in another order: about 1e-6 relative after 4 iterations
        np.testing.assert_allclose(have[k], want[k], rtol=1e-4, atol=1e-6, err_msg=k)


@pytest.mark.parametrize("kind, p, lecam", [("diffaug", 0.0, None), ("ada", 0.7, None), ("none", 0.0, 0.5),
                                             ("ada", 0.3, 0.3)])
def test_static_step_equals_the_dygraph_step_with_augmentation_and_lecam(kind, p, lecam):
    """The same T from the same seed, and LeCam's averages, on both paths (d_steps 2 draws more)."""
    batch, d_steps, g_steps = 8, 2, 2
    real = [paddle.uniform([batch, 3, 16, 16], min=-1, max=1) for _ in range(3)]
    plain, static = setup(), setup()
    eager_T, eager_lecam = Augment(kind, p), LeCam(lecam) if lecam else None
    static_T, static_lecam = Augment(kind, p), LeCam(lecam) if lecam else None
    step = faststep.FastStep("dcgan", plain[0].args, batch, 2e-4, 0.5, 0.999, d_steps, g_steps, static_T, static_lecam)
    step.load(*held(*static))
    for i, x in enumerate(real):
        paddle.seed(10 + i)
        expected = methods.bce_iteration(*plain, x, 100, d_steps, g_steps, Tricks(), T=eager_T, lecam=eager_lecam)
        paddle.seed(10 + i)
        got = step(x)
        got.pop("G_check"), got.pop("D_check")
        assert set(got) == set(expected)
        for k in expected:
            assert got[k] == pytest.approx(expected[k], rel=1e-4, abs=1e-6), (i, k)
    if lecam:
        assert (static_lecam.real, static_lecam.fake) == pytest.approx((eager_lecam.real, eager_lecam.fake), rel=1e-4)
    step.store(*held(*static))
    want, have = state(*plain), state(*static)
    for k in want:  # Adam moves a weight whose gradient is ~0 by up to lr: float order shows there, at ~1e-6
        np.testing.assert_allclose(have[k], want[k], rtol=1e-4, atol=1e-5, err_msg=k)


@pytest.mark.parametrize("arch, labels", [("dcgan", dict(real_label=0.9)),
                                          ("torchblog", dict(real_label=0.9, label_jitter=0.05, flip_labels=0.2))])
def test_static_step_equals_the_dygraph_step_with_label_tricks(arch, labels):
    """Soft, jittered and flipped targets drawn from the same seed in the eager step's order (after the dropout)."""
    batch = 8
    real = [paddle.uniform([batch, 3, 16, 16], min=-1, max=1) for _ in range(3)]
    plain, static = setup(arch=arch), setup(arch=arch)
    step = faststep.FastStep(arch, plain[0].args, batch, 2e-4, 0.5, 0.999, 1, 2, tricks=Tricks(**labels))
    step.load(*held(*static))
    for i, x in enumerate(real):
        paddle.seed(10 + i)
        expected = methods.bce_iteration(*plain, x, 100, 1, 2, Tricks(**labels))
        paddle.seed(10 + i)
        got = step(x)
        got.pop("G_check"), got.pop("D_check")
        for k in expected:
            assert got[k] == pytest.approx(expected[k], rel=1e-4, abs=1e-6), (i, k)
    step.store(*held(*static))
    want, have = state(*plain), state(*static)
    for k in want:
        np.testing.assert_allclose(have[k], want[k], rtol=1e-4, atol=1e-5, err_msg=k)


def assert_adam_states_close(have, want, lr, atol=1e-6):
    """Every number of two states after one Adam update equal to float tolerance, except that up to 1 in 1,000
    elements of a large weight may differ by up to 2.1 lr: Adam's first update moves each weight by about
    lr * sign(gradient), and where a gradient is float noise its sign depends on the order of the sums.
    Float tolerance is relative to each tensor's scale too: an element near 0 of a BatchNorm mean is a sum of
    large terms, whose rounding follows the convolution kernel's order (oneDNN's differs by CPU)."""
    assert set(want) <= set(have)
    for k in want:
        atol_k = max(atol, 1e-4 * float(np.abs(want[k]).max(initial=0.0)))
        close = np.isclose(have[k], want[k], rtol=1e-4, atol=atol_k)
        if k.split(".")[-1] == "weight" and close.size > 1000:
            assert close.mean() >= 0.999 and np.abs(have[k] - want[k]).max() <= 2.1 * lr, k
        else:
            np.testing.assert_allclose(have[k], want[k], rtol=1e-4, atol=atol_k, err_msg=k)


@pytest.mark.parametrize("arch, size, batch", [("mlp", 16, 1), ("mlp", 16, 8), ("conv128", 128, 2)])
def test_static_step_equals_the_dygraph_step_for_the_series_models(arch, size, batch):
    """"Make Your Own GAN"'s MLP (one image per update, as it trains) and 128-px conv GAN, with their Adam
    (lr 1e-4, PyTorch's betas), one D and one G update; conv128's spatial dropout from the same seed.

    After the first iteration every number of the state is compared. Adam's first update moves each weight
    by about lr * sign(gradient): where a gradient is float noise (conv128 has 4.7M weights) its sign may
    differ between the two float orders, and that weight then differs by 2 lr. So a few conv128 weights
    (at most 1 in 1,000) may differ by up to 2.1 lr; every other weight, statistic and moment is equal to
    float tolerance. The losses of three iterations are compared too."""
    lr = 1e-4
    paddle.seed(0)
    real = [paddle.uniform([batch, 3, size, size], min=-1, max=1) for _ in range(3)]
    objects = []
    for _ in range(2):
        paddle.seed(1)
        G, D = network.build(arch, size=size, z_dim=100).values()
        objects.append((G, D, *(paddle.optimizer.Adam(lr, 0.9, 0.999, parameters=n.parameters()) for n in (G, D))))
    plain, static = objects
    step = faststep.FastStep(arch, plain[0].args, batch, lr, 0.9, 0.999, 1, 1)
    step.load(*held(*static))
    for i, x in enumerate(real):
        paddle.seed(10 + i)
        expected = methods.bce_iteration(*plain, x, 100, 1, 1, Tricks())
        paddle.seed(10 + i)
        got = step(x)
        got.pop("G_check"), got.pop("D_check")
        for k in expected:
            assert got[k] == pytest.approx(expected[k], rel=1e-4, abs=1e-6), (i, k)
        if i == 0:
            step.store(*held(*static))
            want, have = state(*plain), state(*static)
            assert set(want) == set(have) and any(k.endswith("moment2_0") for k in want)
            assert_adam_states_close(have, want, lr)


def test_vae_static_step_equals_the_eager_step():
    """The VAE's program is built from methods.vae_losses, the eager step's own: the same noise, losses, weights
    and Adam state (one backward, both networks stepped)."""
    batch, size = 8, 16
    paddle.seed(0)
    real = [paddle.uniform([batch, 3, size, size], min=-1, max=1) for _ in range(3)]
    objects = []
    for _ in range(2):
        paddle.seed(1)
        nets = network.build("vae", size=size, z_dim=100, width=8)
        objects.append((nets, {k: paddle.optimizer.Adam(1e-3, 0.9, 0.999, parameters=n.parameters())
                               for k, n in nets.items()}))
    (plain, plain_opts), (static, static_opts) = objects
    step = faststep.VAEStep("vae", plain["E"].args, batch, 1e-3, 0.9, 0.999, methods.vae_losses)
    step.load(static, static_opts)
    for i, x in enumerate(real):
        paddle.seed(10 + i)
        loss, kl, rec = methods.vae_losses(plain["E"], plain["G"], x, paddle.randn)
        methods.update(list(plain_opts.values()), loss)
        paddle.seed(10 + i)
        got = step(x)
        assert [got["loss"], got["kl"], got["reconstruction"]] == pytest.approx(
            [float(loss), float(kl), float(rec)], rel=1e-5), i
        assert [got["E_check"], got["G_check"]] == pytest.approx(list(control.weight_checks(plain).values()), rel=1e-4)
    step.store(static, static_opts)
    want, have = every_number(plain, plain_opts), every_number(static, static_opts)
    assert set(want) == set(have) and any("moment2" in k for k in want)
    for k in want:
        np.testing.assert_allclose(have[k], want[k], rtol=1e-4, atol=1e-6, err_msg=k)


@pytest.mark.parametrize("options, iterations, fired", [
    (dict(balance="equilibrium", margin=0.35, optimizer="rmsprop"), 3, ""),            # the method's defaults
    (dict(balance="equilibrium", margin=0.01, optimizer="rmsprop", lr=0.01), 5, "DG"),  # both rules fire
    (dict(balance="margin", margin=0.3, optimizer="adam", d_reconstructions=True, augment=("ada", 0.6)), 3, ""),
    (dict(balance="none", optimizer="rmsprop", augment=("diffaug", 0.0)), 3, ""),
])
def test_vaegan_static_step_equals_the_eager_step(lfw8, options, iterations, fired):
    """The VAE/GAN's program is built from the eager step's two halves: the same noise, T, decisions, losses,
    weights and optimizer state, with G's gradient gamma L_llike's plus the reversed GAN loss's."""
    options = dict(options)
    kind, p = options.pop("augment", ("none", 0.0))
    runs = {}
    for step in ("static", "dygraph"):
        cfg = train.TrainConfig(data=lfw8, out="unused", arch="vaegan", batch_size=8, width=8, step=step,
                                device="cpu", augment=kind, **options)
        cfg = train.resolve_defaults(cfg, {"embedded": True, "count": 100}, 1)
        paddle.seed(1)
        method = train.METHODS["vaegan"](cfg, "vaegan", 8, control.Processes())
        method.T.p = p
        method.start(train.Position(), "cpu")
        assert method.path == step
        runs[step] = method
    paddle.seed(0)
    real = [paddle.uniform([8, 3, 8, 8], min=-1, max=1) for _ in range(iterations)]
    results = {}
    for step, method in runs.items():
        paddle.seed(42)
        results[step] = [method.step(x, train.Position()) for x in real]
        method.sync()
    for i, ((e, e_checks), (g, g_checks)) in enumerate(zip(results["dygraph"], results["static"])):
        assert set(g) == set(e)
        for k in e:
            assert g[k] == pytest.approx(e[k], rel=1e-4, abs=1e-6), (i, k)
        assert list(g_checks.values()) == pytest.approx(list(e_checks.values()), rel=1e-4)
    eager, static = runs["dygraph"], runs["static"]
    assert (static.tricks.d_skips, static.tricks.g_skips) == (eager.tricks.d_skips, eager.tricks.g_skips)
    if fired:
        assert eager.tricks.d_skips > 0 and eager.tricks.g_skips > 0
    want, have = every_number(eager.nets, eager.opts), every_number(static.nets, static.opts)
    assert set(want) == set(have)
    for k in want:
        np.testing.assert_allclose(have[k], want[k], rtol=1e-4, atol=1e-6, err_msg=k)


COUNTERS = ("d_skips", "g_skips", "d_updates", "g_updates", "coef_l2")


@pytest.mark.parametrize("arch, options, d_steps, g_steps, lr, iterations, fired", [
    # G's phase skipped in some iterations, not in others (with 2 D steps the first one's word counts)
    ("dcgan", dict(balance="margin", margin=0.3), 2, 1, 2e-3, 4, "G"),
    ("dcgan", dict(balance="equilibrium", margin=0.02), 2, 2, 2e-3, 4, "DG"),
    # RMSProp across its warm-up's step at 10 updates: each D step's rate follows the earlier ones that updated
    ("dcgan", dict(balance="equilibrium", margin=0.02, optimizer="rmsprop", d_updates=9, g_updates=9), 2, 2, 1e-2, 4,
     "DG"),
    ("dcgan", dict(balance="l2", coef_l2=0.05, real_label=0.9), 1, 2, 2e-4, 3, ""),
    # the dropout masks drawn for a skipped G phase go back to the generator
    ("torchblog", dict(balance="margin", margin=0.45, optimizer="rmsprop"), 2, 2, 1e-2, 8, "G"),
    ("torchblog", dict(balance="l2", coef_l2=0.05, optimizer="rmsprop", real_label=0.9, flip_labels=0.1), 1, 2, 1e-3,
     3, ""),
])
def test_static_step_equals_the_dygraph_step_with_balancing(arch, options, d_steps, g_steps, lr, iterations, fired):
    """The skip rules, adaptive L2 and RMSProp's warm-up: the same decisions, counters, losses, weights and
    optimizer state, and the generator left where the eager step leaves it."""
    batch = 8
    paddle.seed(0)
    real = [paddle.uniform([batch, 3, 16, 16], min=-1, max=1) for _ in range(iterations)]
    optimizer = options.get("optimizer", "adam")
    objects = []
    for _ in range(2):
        paddle.seed(1)
        G, D = network.build(arch, size=16, width=8).values()
        objects.append((G, D, *(balance.make_optimizer(optimizer, lr, 0.5, 0.999, net.parameters()) for net in (G, D))))
    plain, static = objects
    eager_tricks, static_tricks = Tricks(lr=lr, **options), Tricks(lr=lr, **options)
    step = faststep.FastStep(arch, plain[0].args, batch, lr, 0.5, 0.999, d_steps, g_steps, tricks=static_tricks)
    step.load(*held(*static))
    paddle.seed(42)
    expected = [methods.bce_iteration(*plain, x, 100, d_steps, g_steps, eager_tricks) for x in real]
    expected_next = paddle.rand([8]).numpy()
    paddle.seed(42)
    got = [step(x) for x in real]
    assert np.array_equal(paddle.rand([8]).numpy(), expected_next)  # the same numbers drawn, none more
    counters = {k: getattr(eager_tricks, k) for k in COUNTERS}
    assert {k: getattr(static_tricks, k) for k in COUNTERS} == counters
    if "D" in fired:
        assert counters["d_skips"] > 0
    if "G" in fired:  # skipped in some iterations and not in others
        assert counters["g_skips"] > 0 and counters["g_updates"] > options.get("g_updates", 0)
    if options["balance"] == "l2":  # the coefficient moved, and the penalty was in D's loss
        assert counters["coef_l2"] != options["coef_l2"]
    for i, (e, g) in enumerate(zip(expected, got)):
        for k in e:
            assert g[k] == pytest.approx(e[k], rel=1e-4, abs=1e-6), (i, k)
    step.store(*held(*static))
    want, have = state(*plain), state(*static)
    assert set(want) == set(have)
    for k in want:
        np.testing.assert_allclose(have[k], want[k], rtol=1e-4, atol=1e-5, err_msg=k)


def test_store_then_load_round_trips_and_training_continues_in_dygraph():
    G, D, opt_G, opt_D = setup()
    step = faststep.FastStep("dcgan", G.args, 4, 2e-4, 0.5, 0.999)
    step.load(*held(G, D, opt_G, opt_D))  # a fresh optimizer: nothing to carry yet
    step(paddle.uniform([4, 3, 16, 16], min=-1, max=1))
    fresh = setup(seed=2)
    step.store(*held(*fresh))
    first = state(*fresh)
    step.load(*held(*fresh))
    step.store(*held(*fresh))
    for k, v in state(*fresh).items():
        np.testing.assert_array_equal(v, first[k], err_msg=k)
    before = state(*fresh)
    real = paddle.uniform([4, 3, 16, 16], min=-1, max=1)
    methods.bce_iteration(*fresh, real, 100, 1, 2, Tricks())  # the stored moments are used
    assert not np.array_equal(state(*fresh)["G.main.0.conv.weight.moment1_0"], before["G.main.0.conv.weight.moment1_0"])


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
        with paddle.static.program_guard(main, startup), paddle.utils.unique_name.guard(), faststep.legacy_api():
            x = paddle.static.data("x", x_shape, "float32")
            x.stop_gradient = False
            weight = paddle.create_parameter(weight_shape, "float32")
            y = paddle.nn.functional.conv2d_transpose(x, weight, **options)
            r = paddle.static.data("r", y.shape, "float32")
            fetch = [y, *paddle.static.gradients((y * r).sum(), [x, weight])]
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


def test_a_batch_of_another_size_is_refused():
    G, D, opt_G, opt_D = setup()
    step = faststep.FastStep("dcgan", G.args, 4, 2e-4, 0.5, 0.999)
    with pytest.raises(ValueError, match="batches of 4"):
        step(paddle.uniform([3, 3, 16, 16], min=-1, max=1))


def test_static_steps_free_memory_in_batches_unless_the_user_chose(monkeypatch):
    """One free per op woke Paddle's collector thread once per op (the PG-GAN speed levels): the static step
    sets a batch size for frees, and leaves a user's own FLAGS_eager_delete_tensor_gb alone."""
    assert faststep.executor_memory_flags({}) == {"FLAGS_eager_delete_tensor_gb": faststep.FREE_IN_BATCHES_GB}
    assert faststep.executor_memory_flags({"FLAGS_eager_delete_tensor_gb": "0"}) == {}
    assert 0 < faststep.FREE_IN_BATCHES_GB <= 1   # bounded: at most this many GiB held back
    monkeypatch.delenv("FLAGS_eager_delete_tensor_gb", raising=False)
    paddle.set_flags({"FLAGS_eager_delete_tensor_gb": 0.0})
    G, D, opt_G, opt_D = setup()
    faststep.FastStep("dcgan", G.args, 4, 2e-4, 0.5, 0.999)
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
    ("vae", {}), ("vaegan", {}), ("mlp", dict(PLAIN, batch_size=4))])
def test_training_runs_on_either_step_to_the_same_weights(lfw8, tmp_path, arch, options):
    runs = {}
    for step in ("static", "dygraph"):
        given = dict(dict(batch_size=16, width=8), **options)
        if arch == "mlp":
            del given["width"]
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


def pggan_setup():
    paddle.seed(1)
    nets = network.build("pggan", **PGGAN_ARGS)
    nets["G_ema"] = network.build_net("pggan", "G", PGGAN_ARGS)
    nets["G_ema"].set_state_dict(nets["G"].state_dict())
    opts = {k: balance.make_optimizer("adam", 1e-3, 0.0, 0.99, nets[k].parameters()) for k in ("G", "D")}
    return nets, opts


def every_number(nets, opts):
    out = {f"{key}.{k}": v.numpy().copy() for key, net in nets.items() for k, v in net.state_dict().items()}
    for key, opt in opts.items():
        for k, entries in checkpoint.optimizer_state(opt, nets[key]).items():
            out.update({f"opt_{key}.{k}.{name}": np.asarray(v).copy() for name, v in entries.items()})
    return out


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


@pytest.mark.parametrize("res, alpha, kind, p, lecam", [(16, 1.0, "none", 0.0, None), (16, 0.3, "none", 0.0, None),
                                                        (8, 0.5, "none", 0.0, None), (16, 1.0, "ada", 0.6, 0.3),
                                                        (8, 1.0, "diffaug", 0.0, None)])
def test_progressive_static_step_equals_the_eager_iteration(res, alpha, kind, p, lecam):
    """WGAN-GP through the double backward, the fade's alpha, T, LeCam and G's average: the same numbers.

    After one iteration every weight, average and Adam moment agrees to float rounding (but for Adam's sign
    on noise-sized gradients, assert_adam_states_close: oneDNN's convolutions sum in another order). Later iterations
    agree less tightly, and not from the program: Adam with beta1 = 0 moves a weight whose gradient is
    rounding noise (D's output bias in WGAN's loss) by a full learning rate either way, so only the losses
    are compared there, to 5e-3."""
    batch = 8
    real = [paddle.uniform([batch, 3, 16, 16], min=-1, max=1) for _ in range(3)]
    (eager, eager_opts), (static, static_opts) = pggan_setup(), pggan_setup()
    eager_T, static_T = Augment(kind, p), Augment(kind, p)
    eager_lecam, static_lecam = (LeCam(lecam), LeCam(lecam)) if lecam else (None, None)
    step = faststep.ProgressiveStep("pggan", PGGAN_ARGS, res, alpha < 1.0, batch, 1e-3, 0.0, 0.99,
                                    progressive.GP_WEIGHT, progressive.DRIFT, static_T, static_lecam)
    step.load(static, static_opts)
    for i, x in enumerate(real):
        paddle.seed(10 + i)
        expected = progressive.iteration(eager["G"], eager["D"], eager["G_ema"], eager_opts["G"], eager_opts["D"],
                                         x, 32, res, alpha, i, T=eager_T, lecam=eager_lecam)
        paddle.seed(10 + i)
        got = step(progressive.real_at(x, res, alpha), alpha, methods.ema_beta(i))
        checks = [got.pop("G_check"), got.pop("D_check")]
        assert set(got) == set(expected)
        for k in expected:
            tolerance = dict(rel=1e-4, abs=1e-5) if i == 0 else dict(rel=5e-3, abs=5e-3)
            assert got[k] == pytest.approx(expected[k], **tolerance), (i, k)
        if i == 0:
            assert checks == pytest.approx(list(control.weight_checks({"G": eager["G"], "D": eager["D"]}).values()),
                                           rel=1e-5)
            step.store(static, static_opts)
            want, have = every_number(eager, eager_opts), every_number(static, static_opts)
            # (store gives the layers of other stages their fresh Adam state, which eager Adam creates on first use)
            assert set(want) <= set(have) and any(".moment2" in k for k in want)
            assert any(k.startswith("G_ema") for k in want)
            assert_adam_states_close(have, want, 1e-3, atol=1e-5)
