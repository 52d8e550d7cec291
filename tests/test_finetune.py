"""train.py --init-from: a new run from another run's networks, with fresh optimizers and schedule."""
import numpy as np
import pytest

import checkpoint
import train
from conftest import assert_user_error, run_script


def tiny(data, out, **over):
    options = dict(data=data, out=str(out), epochs=1, epoch_images=32, batch_size=16, device="cpu", seed=1)
    options.update(over)
    return train.TrainConfig(**options)


@pytest.fixture(scope="module")
def source(lfw8, tmp_path_factory):
    """A dcgan run of 4 iterations with G's moving average, width 8."""
    return train.train(tiny(lfw8, tmp_path_factory.mktemp("source"), epochs=2, width=8, ema=True))


def test_init_from_takes_every_network_and_no_optimizer_state(lfw8, source, tmp_path):
    old = checkpoint.load(source)
    cfg, loaded = train.init_config(tiny(lfw8, tmp_path / "new", init_from=source), explicit={"data", "init_from"})
    assert (cfg.arch, cfg.width, cfg.size, cfg.z_dim) == ("dcgan", 8, 8, 100)   # the checkpoint's network
    cfg = train.resolve_defaults(cfg, {"embedded": True, "count": 100}, 1)
    method = train.METHODS["bce"](cfg, cfg.arch, cfg.size, train.Processes())
    method.initialise(loaded)
    for name in ("G", "D", "G_ema"):
        for k, v in method.nets[name].state_dict().items():
            np.testing.assert_array_equal(v.numpy(), old[name][k], err_msg=(name, k))
    assert not np.array_equal(old["G"]["main.0.conv.weight"], old["G_ema"]["main.0.conv.weight"])
    assert all(not opt.state_dict() for opt in method.opts.values())   # fresh: no moments yet
    assert method.tricks.d_updates == 0

    state = checkpoint.load(train.train(tiny(lfw8, tmp_path / "run", init_from=source, epoch_images=16)))
    assert state["iteration"] == 1 and state["config"]["init_from"] == source
    assert state["opt_D"]["main.0.conv.weight"]["beta1_pow_acc"] == pytest.approx(0.5 ** 2)   # one update's
    assert old["opt_D"]["main.0.conv.weight"]["beta1_pow_acc"] == pytest.approx(0.5 ** 5)   # the source's four


def test_without_its_own_average_the_new_run_starts_its_average_from_the_sources_g(lfw8, tmp_path):
    plain = train.train(tiny(lfw8, tmp_path / "plain", width=8, ema=False))
    cfg, loaded = train.init_config(tiny(lfw8, tmp_path / "new", init_from=plain, ema=True), explicit=None)
    method = train.METHODS["bce"](train.resolve_defaults(cfg, {"count": 100}, 1), cfg.arch, cfg.size,
                                  train.Processes())
    method.initialise(loaded)
    assert "G_ema" not in loaded and "G_ema" in method.nets
    for k, v in method.nets["G_ema"].state_dict().items():
        np.testing.assert_array_equal(v.numpy(), loaded["G"][k], err_msg=k)


@pytest.mark.parametrize("given, phrase", [
    (["--width", "16"], "holds a dcgan network with --width 8, not 16: leave --width out"),
    (["--arch", "torchblog"], "with --arch dcgan, not torchblog"),
    (["--z-dim", "64"], "with --z-dim 100, not 64"),
])
def test_a_conflicting_network_setting_is_refused(lfw8, source, tmp_path, given, phrase):
    result = run_script("train.py", "--data", lfw8, "--out", tmp_path / "new", "--init-from", source, *given,
                        cwd=tmp_path)
    assert_user_error(result, phrase)
    assert not (tmp_path / "new").exists()


def test_pggan_starts_at_the_sources_resolution(lfw8, tmp_path):
    grown = dict(arch="pggan", fmap_base=32, fmap_max=16, z_dim=16, batch_sizes="4:16,8:16", phase_kimg=0.032,
                 epochs=3, epoch_images=32, batch_size=None)
    source = train.train(tiny(lfw8, tmp_path / "grown", **grown))
    assert checkpoint.load(source)["method"]["stage"]["res"] == 8
    state = checkpoint.load(train.train(tiny(lfw8, tmp_path / "new", init_from=source, batch_size=None,
                                             batch_sizes="4:16,8:16")))
    assert state["method"]["start_phase"] == 2 and state["method"]["stage"] == {"res": 8, "alpha": 1.0, "phase": 2}
    assert state["iteration"] == 2 and state["images_seen"] == 32
