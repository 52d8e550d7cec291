"""What a new user met: default batches for any number of processes, --data naming the array, progress in a log file."""
import os

import pytest

import logs
import progressive
import train
from conftest import assert_user_error, run_script


@pytest.mark.parametrize("world", [1, 2, 3, 4, 8])
def test_default_batches_fit_the_built_in_faces_for_any_number_of_processes(world):
    built_in = {"embedded": True, "count": 100}
    dcgan = train.resolve_defaults(train.TrainConfig(), built_in, world)
    assert dcgan.batch_size == max(1, 64 // world)
    pggan = train.resolve_defaults(train.TrainConfig(arch="pggan"), built_in, world)
    table = progressive.parse_batch_sizes(pggan.batch_sizes)
    assert all(b * world <= 100 and (b <= 4 or b % 4 == 0) for b in table.values()), table
    assert train.resolve_defaults(train.TrainConfig(batch_size=50), built_in, world).batch_size == 50  # given: kept
    celeba = train.resolve_defaults(train.TrainConfig(), {"count": 202599}, world)
    assert celeba.batch_size == 128  # elsewhere the batch is per process, as the tutorial's


def test_data_may_name_the_array_and_another_file_is_refused(lfw8, tmp_path):
    args = ["--out", tmp_path / "out", "--epochs", 1, "--batch-size", 16, "--epoch-images", 32, "--width", 8,
            "--device", "cpu"]
    result = run_script("train.py", "--data", os.path.join(lfw8, "images.npy"), *args, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    (tmp_path / "faces.npz").write_bytes(b"x")
    assert_user_error(run_script("train.py", "--data", tmp_path / "faces.npz", *args, cwd=tmp_path),
                      "--data takes the dataset folder that pretreat.py wrote")


def test_progress_in_a_log_file_is_plain_lines(lfw8, tmp_path):
    # stderr is a pipe here, as under nohup, CI or a cluster job: no carriage-return bar updates
    result = run_script("train.py", "--data", lfw8, "--out", tmp_path / "out", "--epochs", 2, "--batch-size", 16,
                        "--epoch-images", 32, "--width", 8, "--device", "cpu", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "\r" not in result.stderr
    lines = result.stderr.splitlines()
    assert "epoch 1/2: 0/2 it" in lines and "epoch 2/2: 0/2 it" in lines  # each epoch's start, once
    assert len(lines) == 5  # the start line, then per epoch its start and its summary


def test_plain_progress_prints_at_its_interval(monkeypatch, capsys):
    now = [100.0]
    monkeypatch.setattr(logs.time, "monotonic", lambda: now[0])
    bar = logs.PlainProgress(range(10), desc="epoch 1/8", total=10, unit="it")
    for i, _ in enumerate(bar):
        now[0] += logs.PLAIN_EVERY / 4 + 0.01  # every fourth iteration crosses the interval
        bar.set_postfix(loss_D="1.386")
    lines = capsys.readouterr().err.splitlines()
    assert lines[0] == "epoch 1/8: 0/10 it"
    assert lines[1].startswith("epoch 1/8: 4/10 it, ") and lines[1].endswith("it/s, loss_D 1.386")
    assert [line.split()[2] for line in lines] == ["0/10", "4/10", "8/10"]
    logs.PlainProgress(range(3), desc="quiet", total=3, disable=True)
    assert capsys.readouterr().err == ""
