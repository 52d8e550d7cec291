"""README.md's commands: every one in a ```bash block runs as shown, or its comment says it needs CelebA or a GPU.

The blocks run in a scratch folder that a user would have after the quick start (the block of that name
runs first and makes it): each later block in a copy of it, its commands in order. A command that trains
is shortened: a quarter of its epochs (at least one) of 64 images each. The launcher's commands run in
their own tests below, the one-machine form as one launcher of 2 processes and the several-machine form
as two launchers on 127.0.0.1, one process each.
"""
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys

import pytest

import checkpoint
from conftest import ROOT, celeba_like, write_jpegs

README = os.path.join(ROOT, "README.md")
MARKS = ("needs CelebA", "needs a GPU")     # what a command's comment says when the tests cannot run it
# .ci/run runs these two: the README's command -> what .ci/run's line holds
RUN_BY_CI = {"pip install -r requirements.txt": ("pip install", "-r requirements.txt"),
             "python -m pytest -q": ("python -m pytest -q",)}
LAUNCH = "python -m paddle.distributed.launch"
SHORT_IMAGES = 64      # --epoch-images of a shortened run: one batch of the built-in faces' default


def readme_blocks(path=README):
    """[(heading, [(command, comment), ...])] for each ```bash block; `a && b` is two commands."""
    blocks, heading, block, other, pending = [], None, None, False, ""
    with open(path) as f:
        lines = f.read().splitlines()
    for line in lines:
        if other:  # inside a fenced block that is not bash
            other = line.strip() != "```"
        elif block is None:
            if line.startswith("#"):
                heading = line.lstrip("#").strip()
            elif line.strip() == "```bash":
                block = []
            elif line.strip().startswith("```"):
                other = True
        elif line.strip() == "```":
            blocks.append((heading, block))
            block = None
        elif line.rstrip().endswith("\\"):  # continued on the next line
            pending += line.rstrip()[:-1].strip() + " "
        else:
            line, pending = pending + line.strip(), ""
            hash_ = re.search(r"(^|\s)#", line)
            command, comment = (line[:hash_.start()], line[hash_.end():]) if hash_ else (line, "")
            block += [(part.strip(), comment.strip()) for part in command.split("&&") if part.strip()]
    assert block is None and not other, f"a fenced block of {path} is not closed"
    return blocks


def kind(command, comment):
    """How the tests cover `command`: 'marked', 'ci', 'launch', 'run', or None when nothing does."""
    if any(mark in comment for mark in MARKS):
        return "marked"
    if command in RUN_BY_CI:
        return "ci"
    if command.startswith(LAUNCH):
        return "launch"
    if command.startswith("python ") and command.split()[1].endswith(".py"):
        return "run"
    return None


def option(argv, flag, value):
    """`argv` with `flag` set to `value` (replaced where given, appended otherwise)."""
    if flag in argv:
        argv = list(argv)
        argv[argv.index(flag) + 1] = value
        return argv
    return argv + [flag, value]


def shorten(args, cwd):
    """The arguments of a train.py command as the tests run it: a quarter of the epochs, each of 64 images.

    --eval-every becomes 1, so that the short run evaluates too.
    A --resume of a numbered snapshot takes the run's oldest kept one: a shorter run numbers them otherwise.
    """
    if "--help" in args:
        return args
    epochs = int(args[args.index("--epochs") + 1]) if "--epochs" in args else 8
    args = option(option(args, "--epochs", str(max(1, epochs // 4))), "--epoch-images", str(SHORT_IMAGES))
    if "--eval-every" in args:  # one evaluation an iteration, so that a short run has them too
        args = option(args, "--eval-every", "1")
    if "conv128" in args:  # 128x128 convolutions at 2 images/s: one batch of 4 an epoch
        args = option(option(args, "--batch-size", "4"), "--epoch-images", "4")
    if "--resume" in args and re.search(r"checkpoint-\d+\.pdparams$", args[args.index("--resume") + 1]):
        resume = args[args.index("--resume") + 1]
        folder = os.path.join(cwd, os.path.dirname(resume))
        kept = sorted(f for f in os.listdir(folder) if re.fullmatch(r"checkpoint-\d+\.pdparams", f))
        assert kept, f"{resume}: the block before it kept no snapshot"
        args = option(args, "--resume", os.path.join(os.path.dirname(resume), kept[0]))
    return args


def argv_of(command, cwd):
    """`python SCRIPT ARGS` as the tests run it: this Python, this checkout's script, shortened if it trains."""
    words = shlex.split(command)
    script, args = words[1], words[2:]
    if script == "train.py":
        args = shorten(args, cwd)
    return [sys.executable, os.path.join(ROOT, script), *args]


def run_block(commands, cwd):
    """Run the block's commands in order in `cwd`; [(command, CompletedProcess)] up to the first failure."""
    results = []
    for command, comment in commands:
        if kind(command, comment) != "run":
            continue
        result = subprocess.run(argv_of(command, cwd), cwd=cwd, capture_output=True, text=True, timeout=900)
        results.append((command, result))
        if result.returncode:
            break
    return results


BLOCKS = readme_blocks()
QUICK_START = next(commands for heading, commands in BLOCKS if heading == "Quick start")

# What some commands leave behind, beside their exit code 0: paths in the block's folder.
WRITES = {
    "python generator.py": ["Generate/0099.png", "Generate/grid.png"],
    "python pretreat.py": ["data/images.npy", "data/manifest.json"],
    "python pretreat.py --src photos --crop center --out mine": ["mine/images.npy"],
    "python dataReader.py --data mine --flip": ["mine/preview.png"],
    "python generator.py --num 16 --seed 7 --out faces": ["faces/0015.png", "faces/grid.png"],
    "python generator.py --seeds 1,5,9 --out picked": ["picked/seed0001.png", "picked/seed0009.png"],
    "python generator.py --walk 5 --seed 0": ["Generate/walk.gif", "Generate/walk/0119.png"],
    "python generator.py --walk-ones": ["Generate/walk_ones.gif"],
    "python generator.py --export deploy/generator": ["deploy/generator.json", "deploy/generator.pdiparams"],
    "python evaluate.py": ["output/metrics.json"],
    "python evaluate.py --nearest 32": ["output/nearest.png"],
    "python train.py --epochs 8 --eval-every 100 --out runs/swd": ["runs/swd/swd.png"],
    "python generator.py --checkpoint runs/vaegan/checkpoint.pdparams --reconstruct 16 --seed 0":
        ["Generate/reconstruct.png"],
}


@pytest.fixture(scope="module")
def after_quick_start(tmp_path_factory):
    """A user's folder after the quick start (shortened), with a folder of 100 photos beside it."""
    folder = tmp_path_factory.mktemp("user")
    write_jpegs(str(folder / "photos"), celeba_like(100))
    return folder, run_block(QUICK_START, folder)


def test_every_command_is_run_by_a_test_or_says_what_it_needs():
    commands = [c for _, block in BLOCKS for c in block]
    uncovered = [command for command, comment in commands if kind(command, comment) is None]
    assert not uncovered, f"README commands no test runs and no comment says {' or '.join(MARKS)}: {uncovered}"
    assert len(commands) >= 30 and "python train.py --epochs 8" in [c for c, _ in QUICK_START]
    with open(os.path.join(ROOT, ".ci", "run")) as f:
        ci = f.read()
    for command in {command for command, comment in commands if kind(command, comment) == "ci"}:
        assert any(all(part in line for part in RUN_BY_CI[command]) for line in ci.splitlines()), command
    assert all(command in [c for _, block in BLOCKS for c, _ in block] for command in WRITES)


def test_the_parser_reads_chains_comments_and_continued_lines(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text("# A\n```bash\npython a.py && python b.py --x 1   # both\npython c.py \\\n  --y 2\n```\n"
                      "## B\n```\n# not bash\n```\n```bash\npip install torch          # needs a GPU\nls\n```\n")
    blocks = readme_blocks(str(readme))
    assert blocks == [("A", [("python a.py", "both"), ("python b.py --x 1", "both"), ("python c.py --y 2", "")]),
                      ("B", [("pip install torch", "needs a GPU"), ("ls", "")])]
    assert [kind(*c) for c in blocks[0][1] + blocks[1][1]] == ["run", "run", "run", "marked", None]


def test_shortening_keeps_what_the_command_asks_and_trains_less(tmp_path):
    assert shorten(["--epochs", "12", "--out", "x"], tmp_path) == ["--epochs", "3", "--out", "x",
                                                                   "--epoch-images", "64"]
    assert shorten(["--arch", "mlp", "--epochs", "1", "--epoch-images", "6400"], tmp_path) == \
        ["--arch", "mlp", "--epochs", "1", "--epoch-images", "64"]
    assert shorten(["--help"], tmp_path) == ["--help"]
    (tmp_path / "out").mkdir()
    for i in (6, 7):
        (tmp_path / "out" / checkpoint.snapshot_name(i)).write_bytes(b"")
    resumed = shorten(["--resume", "out/checkpoint-0001500.pdparams"], tmp_path)
    assert resumed[:2] == ["--resume", os.path.join("out", checkpoint.snapshot_name(6))]


RUN_BLOCKS = [i for i, (_, block) in enumerate(BLOCKS) if any(kind(*c) == "run" for c in block)]


@pytest.mark.parametrize("index", RUN_BLOCKS, ids=[f"{i}-{BLOCKS[i][0]}" for i in RUN_BLOCKS])
def test_the_readmes_block_runs(index, after_quick_start, tmp_path):
    heading, commands = BLOCKS[index]
    folder, quick = after_quick_start
    if commands is QUICK_START:
        cwd, results = folder, quick
    else:
        cwd = tmp_path / "user"
        shutil.copytree(folder, cwd)
        results = run_block(commands, cwd)
    ran = [command for command, comment in commands if kind(command, comment) == "run"]
    for command, result in results:
        assert result.returncode == 0, f"{command}\n{result.stdout[-2000:]}\n{result.stderr[-3000:]}"
        assert "Traceback" not in result.stderr, result.stderr
        for path in WRITES.get(command, []):
            assert os.path.exists(cwd / path), f"{command} did not write {path}"
    assert [command for command, _ in results] == ran


# ----------------------------------------------------------------------------- the launcher's commands

def launch_commands():
    return [command for _, block in BLOCKS for command, comment in block if kind(command, comment) == "launch"]


def launcher_argv(command, cwd):
    """The launcher's command as the tests run it: this Python and checkout, train.py shortened."""
    words = shlex.split(command)
    at = words.index("train.py")
    return [sys.executable, *words[1:at], os.path.join(ROOT, "train.py"), *shorten(words[at + 1:], cwd)]


def fresh_folder(after_quick_start, path):
    """A folder holding only the quick start's dataset."""
    folder, _ = after_quick_start
    shutil.copytree(folder / "data", path / "data")
    return path


def test_the_readmes_one_machine_command_trains_two_processes(after_quick_start, tmp_path):
    [command] = [c for c in launch_commands() if "--nproc_per_node 2" in c]
    cwd = fresh_folder(after_quick_start, tmp_path)
    result = subprocess.run(launcher_argv(command, cwd), cwd=cwd, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    state = checkpoint.load(str(cwd / "output" / checkpoint.FILE))
    # the default batch of 64 on the built-in faces is global: 32 per process, one step an epoch
    assert state["config"]["batch_size"] == 32 and state["config"]["width"] == 32
    assert (state["epoch"], state["iteration"], state["images_seen"]) == (2, 2, 128)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch_together(argvs, folders):
    """Start one launcher per folder at once, as on separate machines, with a master on this host that no other
    run uses; [(returncode, output and workers' logs)]."""
    master = f"127.0.0.1:{free_port()}"
    argvs = [option(argv, "--master", master) for argv in argvs]
    launchers = [subprocess.Popen(argv, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                  start_new_session=True) for argv, cwd in zip(argvs, folders)]
    try:
        outputs = [p.communicate(timeout=600)[0] for p in launchers]
    finally:  # a launcher that failed leaves the other waiting for its peer
        for p in launchers:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()
    logs = [[open(os.path.join(cwd, "log", f)).read() for f in sorted(os.listdir(cwd / "log"))]
            if os.path.isdir(cwd / "log") else [] for cwd in folders]
    return [(p.returncode, out + "".join(log)) for p, out, log in zip(launchers, outputs, logs)]


def test_the_readmes_two_machine_commands_train_as_two_launchers_on_this_host(after_quick_start, tmp_path):
    nodes = [c for c in launch_commands() if "--nnodes 2" in c]
    assert [shlex.split(c)[shlex.split(c).index("--rank") + 1] for c in nodes] == ["0", "1"]
    folders = [fresh_folder(after_quick_start, tmp_path / f"machine{rank}") for rank in (0, 1)]
    argvs = [launcher_argv(command, cwd) for command, cwd in zip(nodes, folders)]
    for code, out in launch_together(argvs, folders):
        assert code == 0, out[-4000:]
    state = checkpoint.load(str(folders[0] / "output" / checkpoint.FILE))
    assert state["config"]["batch_size"] == 32  # the global 64 split between the two machines' processes
    assert (state["epoch"], state["iteration"], state["images_seen"]) == (2, 2, 128)
    assert not os.path.exists(folders[1] / "output")  # the second machine writes nothing but its log/

    # Resuming: the second machine has no checkpoint, so it would start over while the first continues.
    longer = [option(argv, "--epochs", "3") for argv in argvs]
    for code, out in launch_together(longer, folders):
        assert code != 0 and "the processes start at different iterations" in out, out[-4000:]
        assert "Traceback" not in out, out[-4000:]
    shutil.copytree(folders[0] / "output", folders[1] / "output")  # as the README says: copy it from rank 0
    for code, out in launch_together(longer, folders):
        assert code == 0, out[-4000:]
    state = checkpoint.load(str(folders[0] / "output" / checkpoint.FILE))
    assert (state["epoch"], state["iteration"], state["images_seen"]) == (3, 3, 192)
