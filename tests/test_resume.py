"""Training that survives: exact resume, signals, SIGKILL during a save, NaN, two processes."""
import json
import os
import signal
import subprocess
import sys

import numpy as np
import pytest

import checkpoint
import facedata
import methods
import train
from conftest import ROOT, assert_user_error, run_script, sigint_after

# A wrapper that runs train.py's main after making the n-th training iteration (or the n-th
# checkpoint write) do something: the test's way to interrupt at an exact point.
WRAPPER = """
import os, signal, sys, time
sys.path.insert(0, {root!r})
import checkpoint, methods, train
action, at = sys.argv[1], int(sys.argv[2])
count = [0]

def after_iteration(fn):
    def wrapped(*args, **kwargs):
        out = fn(*args, **kwargs)
        count[0] += 1
        if count[0] == at and action.startswith("SIG"):
            os.kill(os.getpid(), getattr(signal, action))
        return out
    return wrapped

methods.BCEMethod.step = after_iteration(methods.BCEMethod.step)

if action == "slow-save":  # the at-th checkpoint write stops halfway, says so, and waits to be killed
    real_write, saves = checkpoint.write_atomic, [0]
    def slow_write(path, data, durable=False):
        if path.endswith(checkpoint.FILE):
            saves[0] += 1
            if saves[0] == at:
                with open(path + ".tmp" + str(os.getpid()), "wb") as f:
                    f.write(data[:len(data) // 2])
                    f.flush()
                print("in-save", flush=True)
                time.sleep(600)
        real_write(path, data, durable)
    checkpoint.write_atomic = slow_write
train.main(sys.argv[3:])
"""


def tiny(data, out, **over):
    options = dict(data=data, out=str(out), epochs=3, batch_size=16, epoch_images=64, width=8,
                   sample_every=100, log_every=1, save_every=3, device="cpu")
    options.update(over)
    return train.TrainConfig(**options)


def cli(cfg):
    """The train.py command line of a TrainConfig's non-default settings."""
    args = []
    for name, value in vars(cfg).items():
        if value != getattr(train.TrainConfig, name):
            args += ["--" + name.replace("_", "-"), str(value)]
    return args


def wrapper(tmp_path, action, at, cfg, **popen):
    script = tmp_path / "wrapper.py"
    script.write_text(WRAPPER.format(root=ROOT))
    return subprocess.Popen([sys.executable, str(script), action, str(at), *cli(cfg)], cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **popen)


def losses(out):
    with open(os.path.join(out, "log.jsonl")) as f:
        return [(r["iteration"], r["loss_D"], r["loss_G"]) for r in map(json.loads, f)]


def assert_same_state(a, b):
    for part in ("G", "D"):
        assert a[part].keys() == b[part].keys()
        for k in a[part]:
            np.testing.assert_array_equal(a[part][k], b[part][k], err_msg=(part, k))
    for opt in ("opt_G", "opt_D"):
        for k, entries in a[opt].items():
            for name, v in entries.items():
                np.testing.assert_array_equal(v, b[opt][k][name], err_msg=(opt, k, name))


@pytest.mark.parametrize("step", ["static", "dygraph"])
def test_interrupted_and_resumed_run_equals_the_uninterrupted_one(step, lfw8, tmp_path, monkeypatch):
    whole = checkpoint.load(train.train(tiny(lfw8, tmp_path / "whole", step=step)))

    interrupt_after = sigint_after(6)  # a real SIGINT after the 6th iteration (epoch 2, batch 2 of 4)
    before = signal.getsignal(signal.SIGINT)  # Python's own, or SIG_IGN when pytest was started in the background

    with monkeypatch.context() as m:
        m.setattr(methods.BCEMethod, "step", interrupt_after(methods.BCEMethod.step))
        stopped = checkpoint.load(train.train(tiny(lfw8, tmp_path / "parts", step=step)))
    assert (stopped["epoch"], stopped["batch"], stopped["iteration"], stopped["images_seen"]) == (2, 2, 6, 96)
    assert len(stopped["order"]) == 64 and stopped["version"] == checkpoint.__version__
    assert signal.getsignal(signal.SIGINT) is before  # handlers restored

    resumed = checkpoint.load(train.train(tiny(lfw8, tmp_path / "parts", step=step)))
    assert resumed["iteration"] == whole["iteration"] == 12
    assert_same_state(resumed, whole)  # bit-identical on the CPU, both steps
    assert losses(tmp_path / "parts") == losses(tmp_path / "whole")


def test_a_finished_run_is_not_trained_again_and_more_epochs_continue_it(lfw8, tmp_path):
    cfg = tiny(lfw8, tmp_path, epochs=1)
    first = checkpoint.load(train.train(cfg))
    again = checkpoint.load(train.train(cfg))
    assert_same_state(again, first)
    longer = checkpoint.load(train.train(tiny(lfw8, tmp_path, epochs=2)))
    assert (longer["epoch"], longer["iteration"]) == (2, 8)
    assert [r[0] for r in losses(tmp_path)] == list(range(1, 9))


def test_resume_never_starts_over_and_keep_holds_numbered_snapshots(lfw8, tmp_path):
    train.train(tiny(lfw8, tmp_path, epochs=1))
    state = checkpoint.load(train.train(tiny(lfw8, tmp_path, epochs=2, resume="never", keep=2)))
    assert state["iteration"] == 8
    assert sorted(f for f in os.listdir(tmp_path) if f.startswith("checkpoint-")) == \
        ["checkpoint-0000006.pdparams", "checkpoint-0000008.pdparams"]  # saves at 3, 4, 6, 8: the newest two
    assert checkpoint.load(str(tmp_path / "checkpoint-0000006.pdparams"))["iteration"] == 6


@pytest.mark.parametrize("sig", ["SIGINT", "SIGTERM"])
def test_a_signal_saves_and_exits_0(sig, lfw8, tmp_path):
    cfg = tiny(lfw8, tmp_path / "out", save_every=0)
    proc = wrapper(tmp_path, sig, 5, cfg)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    assert "Traceback" not in err and "resume with the same command" in err.strip().splitlines()[-1]
    state = checkpoint.load(str(tmp_path / "out" / checkpoint.FILE))
    assert (state["epoch"], state["batch"], state["iteration"]) == (2, 1, 5)


def test_sigkill_during_a_save_leaves_the_previous_checkpoint(lfw8, tmp_path):
    cfg = tiny(lfw8, tmp_path / "out")  # saves at iterations 3, 4 (epoch end), 6, ...
    proc = wrapper(tmp_path, "slow-save", 2, cfg)
    assert proc.stdout.readline().strip() == "in-save"  # blocks until the second save is halfway
    proc.kill()
    proc.communicate(timeout=60)
    folder = tmp_path / "out"
    assert [f for f in os.listdir(folder) if ".tmp" in f]  # the half-written file, under its temporary name
    state = checkpoint.load(str(folder / checkpoint.FILE))
    assert state["iteration"] == 3
    final = checkpoint.load(train.train(tiny(lfw8, folder)))  # and the run can go on
    assert final["iteration"] == 12 and not [f for f in os.listdir(folder) if ".tmp" in f]


def test_a_nan_stops_training_and_keeps_the_last_good_checkpoint(lfw8, tmp_path, monkeypatch):
    real_get = facedata.FaceDataset.get_batch
    calls = [0]

    def poisoned(self, indices):
        calls[0] += 1
        batch = real_get(self, indices)
        if calls[0] == 5:
            batch[0, 0, 0, 0] = np.nan
        return batch

    monkeypatch.setattr(facedata.FaceDataset, "get_batch", poisoned)
    with pytest.raises(train.Diverged) as info:
        train.train(tiny(lfw8, tmp_path))
    message = str(info.value)
    assert "iteration 5" in message and "D diverged" in message and "loss_D" in message
    assert "(iteration 4)" in message
    state = checkpoint.load(str(tmp_path / checkpoint.FILE))
    assert state["iteration"] == 4
    assert all(np.isfinite(v).all() for v in state["G"].values())
    assert max(r[0] for r in losses(tmp_path)) == 4  # nothing was logged for the bad iteration


def test_unwritable_names_the_folder_that_blocks(tmp_path, monkeypatch):
    assert train.unwritable(tmp_path / "new" / "run") is None
    with monkeypatch.context() as m:  # root may write anywhere: ask a stub
        m.setattr(os, "access", lambda path, mode: path != str(tmp_path))
        assert train.unwritable(tmp_path / "new" / "run") == f"no permission to write in {tmp_path}"
    (tmp_path / "f").write_text("x")
    assert train.unwritable(tmp_path / "f" / "run") == f"{tmp_path / 'f'} is a file, not a folder"
    assert not (tmp_path / "new").exists()  # checked without creating anything


@pytest.fixture
def finished(lfw8, tmp_path):
    """A finished one-epoch run in tmp_path/run, and its checkpoint's bytes."""
    train.train(tiny(lfw8, tmp_path / "run", epochs=1))
    path = tmp_path / "run" / checkpoint.FILE
    return path, path.read_bytes()


@pytest.mark.parametrize("args, phrase", [
    (["--z-dim", "50"], "was trained with --z-dim 100, not 50"),
    (["--batch-size", "8"], "was trained with --batch-size 16, not 8"),
    (["--lr", "0.001"], "was trained with --lr 0.0002, not 0.001"),
])
def test_a_resume_that_would_change_the_run_is_refused(args, phrase, finished, lfw8, tmp_path):
    path, before = finished
    result = run_script("train.py", "--data", lfw8, "--out", path.parent, "--epochs", 2, *args, cwd=tmp_path)
    assert_user_error(result, phrase, "--resume never")
    assert path.read_bytes() == before


def test_resume_takes_the_settings_it_was_not_given(finished, lfw8, tmp_path):
    path, _ = finished
    result = run_script("train.py", "--data", lfw8, "--out", path.parent, "--epochs", 2, "--device", "cpu",
                        cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    state = checkpoint.load(str(path))
    assert state["iteration"] == 8 and state["config"]["batch_size"] == 16 and state["config"]["width"] == 8


@pytest.mark.parametrize("damage, phrase", [
    (lambda b: b[:len(b) // 3], "truncated or not a paddle-fakeface checkpoint"),
    (lambda b: b"not a pickle at all", "truncated or not a paddle-fakeface checkpoint"),
])
def test_a_damaged_checkpoint_is_refused_and_left_alone(damage, phrase, finished, lfw8, tmp_path):
    path, before = finished
    path.write_bytes(damage(before))
    result = run_script("train.py", "--data", lfw8, "--out", path.parent, "--epochs", 2, cwd=tmp_path)
    assert_user_error(result, phrase)
    assert path.read_bytes() == damage(before)


def test_a_checkpoint_that_would_run_code_is_refused_without_running_it(tmp_path):
    import pickle

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {tmp_path / 'owned'}",))

    path = tmp_path / "evil.pdparams"
    path.write_bytes(pickle.dumps({"format": checkpoint.FORMAT, "G": Evil()}))
    with pytest.raises(checkpoint.CheckpointError, match="refusing to unpickle"):
        checkpoint.load(str(path))
    assert not (tmp_path / "owned").exists()


def test_a_checkpoint_names_no_paddle_class(finished):
    import io
    import pickle
    path, data = finished
    named = []

    class Recording(pickle.Unpickler):
        def find_class(self, module, name):
            named.append(module)
            return super().find_class(module, name)

    Recording(io.BytesIO(data)).load()
    assert named and not [m for m in named if m.startswith("paddle")], named  # a Paddle rename cannot break it
    assert not [m for m, _ in checkpoint.ALLOWED if m.startswith("paddle")]
    state = checkpoint.load(str(path))
    assert state["rng"]["paddle"][0]["engine"].dtype == np.uint8


def test_a_checkpoint_of_the_earlier_format_still_resumes_and_generates(lfw8, tmp_path):
    # Written by 0.5.0 (commit 4de3231): Paddle's GeneratorState pickled as paddle.base.libpaddle.GeneratorState.
    # train.py --data lfw8 --out run --epochs 2 --batch-size 16 --epoch-images 32 --width 4 --z-dim 8 --device cpu
    fixture = os.path.join(ROOT, "tests", "fixtures", "checkpoint_generator_state.pdparams")
    with open(fixture, "rb") as f:
        assert b"paddle.base.libpaddle" in f.read()
    (tmp_path / "run").mkdir()
    path = tmp_path / "run" / checkpoint.FILE
    path.write_bytes(open(fixture, "rb").read())
    before = checkpoint.load(str(path))
    assert (before["version"], before["iteration"]) == ("0.5.0", 4)
    result = run_script("train.py", "--data", lfw8, "--out", tmp_path / "run", "--epochs", 3, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    after = checkpoint.load(str(path))
    assert (after["epoch"], after["iteration"], after["version"]) == (3, 6, checkpoint.__version__)
    assert any(not np.array_equal(after["G"][k], before["G"][k]) for k in before["G"])  # it trained on
    made = run_script("generator.py", "--checkpoint", path, "--num", 2, "--seed", 0, "--out", tmp_path / "g",
                      cwd=tmp_path)
    assert made.returncode == 0, made.stderr
    assert os.path.exists(tmp_path / "g" / "grid.png")


def test_another_architecture_is_refused_by_train_and_generator(finished, lfw8, tmp_path):
    import paddle
    path, _ = finished
    state = checkpoint.load(str(path))
    state["arch"] = state["config"]["arch"] = "stylegan"
    paddle.save(state, str(path))
    assert_user_error(run_script("train.py", "--data", lfw8, "--out", path.parent, "--epochs", 2, cwd=tmp_path),
                      "holds a 'stylegan' network")
    assert_user_error(run_script("generator.py", "--checkpoint", path, "--out", tmp_path / "g", cwd=tmp_path),
                      "cannot build")
    assert not (tmp_path / "g").exists()


def test_a_batch_larger_than_the_dataset_is_refused(lfw8, tmp_path):
    result = run_script("train.py", "--data", lfw8, "--out", tmp_path / "out", "--batch-size", 101, cwd=tmp_path)
    assert_user_error(result, "--batch-size 101 is more than the 100 images")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("more", [
    [],
    ["--balance", "margin", "--margin", "0.45"],   # skips decided on the errors of both processes' batches
    ["--arch", "vaegan"],
    ["--augment", "ada", "--lecam", "0.1"],        # augmented under DataParallel
])
def test_two_processes_train_the_same_weights_and_only_rank_0_writes(more, lfw8, tmp_path):
    # Each process dumps its trained parameters before rank 0's BatchNorm statistics are shared.
    script = tmp_path / "dist_wrapper.py"
    script.write_text(f"""
import os, sys
sys.path.insert(0, {ROOT!r})
import numpy as np, train
share = train.Processes.share_state
def dump(self, *nets):
    arrays = {{f"{{i}}.{{k}}": p.numpy() for i, net in enumerate(nets) for k, p in net.named_parameters()}}
    np.savez(os.path.join({str(tmp_path)!r}, f"rank{{self.rank}}.npz"), **arrays)
    share(self, *nets)
train.Processes.share_state = dump
train.main(sys.argv[1:])
""")
    cmd = [sys.executable, "-m", "paddle.distributed.launch", "--nproc_per_node", "2", str(script),
           "--data", lfw8, "--out", str(tmp_path / "out"), "--epochs", "1", "--batch-size", "8",
           "--epoch-images", "64", "--width", "8", "--device", "cpu", "--log-every", "1", *more]
    result = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    r0, r1 = np.load(tmp_path / "rank0.npz"), np.load(tmp_path / "rank1.npz")
    trained = [k for k in r0.files if not k.endswith(("_mean", "_variance"))]
    assert trained and r0.files == r1.files
    for k in trained:  # averaged gradients keep the replicas equal
        np.testing.assert_array_equal(r0[k], r1[k], err_msg=k)
    assert any(not np.array_equal(r0[k], r1[k]) for k in r0.files if k.endswith("_mean"))  # each saw its own batches
    state = checkpoint.load(str(tmp_path / "out" / checkpoint.FILE))
    written = ["checkpoint.pdparams", "log.jsonl", "loss.png", "monitor.png", "progress.gif", "samples"]
    ada = state["config"]["augment"] == "ada"  # asked for, or dcgan's recipe for the built-in faces
    assert sorted(os.listdir(tmp_path / "out")) == sorted(written + (["augment.png"] if ada else []))
    assert ada != ("vaegan" in more)  # the VAE/GAN has no recipe for the built-in faces
    assert (state["iteration"], state["images_seen"]) == (4, 64)  # 4 steps of 2 x 8 images
    assert [r[0] for r in losses(tmp_path / "out")] == [1, 2, 3, 4]
    if "margin" in more:
        assert state["method"]["d_skips"] + state["method"]["g_skips"] > 0
