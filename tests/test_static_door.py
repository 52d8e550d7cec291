"""The static CPU step's door: faststep.py (Paddle's legacy-program internals) is imported only for that step, and
where it cannot run, training takes the eager step with one line while generating and evaluating do not notice."""
import os
import subprocess
import sys

import checkpoint
import methods
import runtime
from conftest import ROOT, assert_user_error

BLOCKED = ("import runpy, sys; sys.path.insert(0, sys.argv[1]); sys.modules['faststep'] = None  # import fails\n"
           "script = sys.argv[2]; sys.argv = sys.argv[2:]; runpy.run_path(script, run_name='__main__')")


def run_without_faststep(script, *args, cwd):
    """`python script args` in a process where `import faststep` raises ImportError, as if Paddle had moved a name."""
    return subprocess.run([sys.executable, "-c", BLOCKED, ROOT, os.path.join(ROOT, script), *map(str, args)],
                          cwd=cwd, capture_output=True, text=True, timeout=300)


def test_only_tested_paddle_releases_run_the_static_step():
    tested = ", ".join(runtime.TESTED_PADDLE)
    assert methods.static_step_problem("3.2.2") == f"it is tested on Paddle {tested}, not 3.2.2"
    assert methods.static_step_problem(runtime.TESTED_PADDLE[0]) is None  # and faststep imports
    with open(os.path.join(ROOT, "requirements.txt")) as f:   # what CI installs is what was tested
        assert [f"paddlepaddle=={v}" for v in runtime.TESTED_PADDLE] == [
            line.split("#")[0].strip() for line in f if line.startswith("paddlepaddle")]


def test_importing_the_eager_methods_does_not_import_faststep(tmp_path):
    code = ("import sys; sys.path.insert(0, sys.argv[1]); import train, generator, evaluate; "
            "print('faststep' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", code, ROOT], cwd=tmp_path, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "False"


def test_without_faststep_training_falls_back_in_one_line_and_the_rest_works(lfw8, tmp_path):
    args = ["--data", lfw8, "--epochs", 1, "--batch-size", 16, "--epoch-images", 32, "--width", 8, "--device", "cpu"]
    auto = run_without_faststep("train.py", *args, "--out", tmp_path / "auto", cwd=tmp_path)
    assert auto.returncode == 0, auto.stderr
    said = [line for line in auto.stderr.splitlines() if "static CPU step is off" in line]
    assert said == ["training on Paddle's eager step: the static CPU step is off because faststep.py does not import "
                    "with this Paddle (ModuleNotFoundError: import of faststep halted; None in sys.modules)"]
    assert "dygraph step" in auto.stderr and "Traceback" not in auto.stderr
    eager = run_without_faststep("train.py", *args, "--out", tmp_path / "eager", "--step", "dygraph", cwd=tmp_path)
    assert eager.returncode == 0 and "static CPU step" not in eager.stderr, eager.stderr
    assert_user_error(run_without_faststep("train.py", *args, "--out", tmp_path / "static", "--step", "static",
                                           cwd=tmp_path), "--step static cannot run: faststep.py does not import")
    ckpt = tmp_path / "auto" / checkpoint.FILE
    assert checkpoint.load(str(ckpt))["iteration"] == 2
    made = run_without_faststep("generator.py", "--checkpoint", ckpt, "--num", 4, "--seed", 0, "--out", tmp_path / "g",
                                cwd=tmp_path)
    assert made.returncode == 0, made.stderr
    assert sorted(os.listdir(tmp_path / "g")) == ["0000.png", "0001.png", "0002.png", "0003.png", "grid.png"]
    scored = run_without_faststep("evaluate.py", "--checkpoint", ckpt, "--data", lfw8, "--num", 8, cwd=tmp_path)
    assert scored.returncode == 0, scored.stderr
    assert os.path.exists(tmp_path / "auto" / "metrics.json")


UNTESTED = ("import runpy, sys; sys.path.insert(0, sys.argv[1]); import runtime\n"
            "runtime.TESTED_PADDLE = ('0.0',)  # as if this Paddle were a release the tests did not pass on\n"
            "script = sys.argv[2]; sys.argv = sys.argv[2:]; runpy.run_path(script, run_name='__main__')")


def test_on_an_untested_paddle_training_and_generation_take_the_eager_paths_in_one_line(lfw8, tmp_path):
    def run(script, *args):
        return subprocess.run([sys.executable, "-c", UNTESTED, ROOT, os.path.join(ROOT, script), *map(str, args)],
                              cwd=tmp_path, capture_output=True, text=True, timeout=300)
    import paddle
    trained = run("train.py", "--data", lfw8, "--out", tmp_path / "run", "--epochs", 1, "--batch-size", 16,
                  "--epoch-images", 32, "--width", 8, "--device", "cpu")
    assert trained.returncode == 0, trained.stderr
    assert ("training on Paddle's eager step: the static CPU step is off because it is tested on Paddle 0.0, "
            f"not {paddle.__version__}") in trained.stderr.splitlines()
    ckpt = tmp_path / "run" / checkpoint.FILE
    made = run("generator.py", "--checkpoint", ckpt, "--num", 2, "--seed", 0, "--out", tmp_path / "g")
    assert made.returncode == 0, made.stderr
    assert (f"generating in eager mode: Paddle Inference is off because it is tested on Paddle 0.0, "
            f"not {paddle.__version__}") in made.stderr.splitlines()
    assert "dygraph" in made.stderr and not os.path.exists(tmp_path / "run" / "generator_export")
    assert_user_error(run("generator.py", "--checkpoint", ckpt, "--engine", "inference", "--out", tmp_path / "h"),
                      "--engine inference cannot run: it is tested on Paddle 0.0")
