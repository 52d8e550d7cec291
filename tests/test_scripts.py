"""Every script: importing it does nothing, --help shows examples."""
import os
import subprocess
import sys

import pytest

from conftest import ROOT, run_script

SCRIPTS = ["pretreat.py", "dataReader.py", "weightInit.py", "network.py", "train.py", "generator.py"]


def test_importing_the_scripts_creates_nothing_and_starts_nothing(tmp_path):
    code = ("import sys, threading; sys.path.insert(0, sys.argv[1]); "
            "import pretreat, dataReader, facedata, weightInit, network, augment, balance, checkpoint, control, "
            "faststep, logs, methods, metrics, progressive, runtime, train, generator, evaluate; "
            "print(threading.active_count())")
    result = subprocess.run([sys.executable, "-c", code, ROOT], cwd=tmp_path, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "1"  # no loader thread, no pool
    assert os.listdir(tmp_path) == []
    assert result.stderr == ""  # and no warning either


@pytest.mark.parametrize("script", ["pretreat.py", "dataReader.py", "train.py", "generator.py", "evaluate.py"])
def test_help_shows_examples(script, tmp_path):
    result = run_script(script, "--help", cwd=tmp_path)
    assert result.returncode == 0
    assert "Examples:" in result.stdout and f"python {script}" in result.stdout
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("args", [["--help"], ["--out", "data"]])
def test_pretreat_does_not_load_paddle(args, tmp_path):
    # pretreat needs numpy and OpenCV only: starting Paddle would cost about a second per run
    code = ("import os, runpy, sys; root = sys.argv[1]; sys.path.insert(0, root); sys.argv = sys.argv[1:]\n"
            "try:\n    runpy.run_path(os.path.join(root, 'pretreat.py'), run_name='__main__')\n"
            "except SystemExit as e:\n    assert not e.code, e.code\n"
            "print('paddle' in sys.modules, 'pretreat' in sys.modules or 'facedata' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", code, ROOT, *args], cwd=tmp_path, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == "False True"


def test_the_import_graph_has_no_cycle():
    import ast
    modules = {f[:-3] for f in os.listdir(ROOT) if f.endswith(".py")}
    graph = {}
    for m in modules:
        tree = ast.parse(open(os.path.join(ROOT, m + ".py")).read())
        names = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
        names |= {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
        graph[m] = {name.split(".")[0] for name in names} & modules - {m}
    done = set()

    def visit(m, path):
        assert m not in path, " -> ".join(path + [m])
        if m not in done:
            for dep in sorted(graph[m]):
                visit(dep, path + [m])
            done.add(m)
    for m in sorted(modules):
        visit(m, [])
    assert {"train", "generator", "evaluate"} <= done and "evaluate" not in graph["train"]


# Run-time patches in the code, each (file, function): none. Fast forms are chosen by argument (network.FORMS) and
# the static program's ops passed in (faststep.LEGACY_OPS); a patch anywhere fails the test below.
REMAINING_PATCHES = set()


def run_time_patches(path):
    """{(function, target)} of `path`'s assignments (and deletions) to an attribute of an imported module or to a
    `forward`, and its setattr calls on anything but self: the ways code changes other code at run time."""
    import ast
    tree = ast.parse(open(path).read())
    modules = {a.asname or a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    found = set()

    def visit(node, function):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            function = node.name
        targets = node.targets if isinstance(node, (ast.Assign, ast.Delete)) else \
            [node.target] if isinstance(node, (ast.AugAssign, ast.AnnAssign)) else []
        for t in [e for t in targets for e in (t.elts if isinstance(t, ast.Tuple) else [t])]:
            base = t
            while isinstance(base, ast.Attribute):
                base = base.value
            if isinstance(t, ast.Attribute) and ((isinstance(base, ast.Name) and base.id in modules)
                                                 or t.attr == "forward"):
                found.add((function, ast.unparse(t)))
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "setattr"
                and ast.unparse(node.args[0]) != "self"):
            found.add((function, f"setattr({ast.unparse(node.args[0])}, ...)"))
        for child in ast.iter_child_nodes(node):
            visit(child, function)

    visit(tree, "<module>")
    return found


def test_no_code_patches_paddle_or_a_module_at_run_time(tmp_path):
    found = {(f, function) for f in sorted(os.listdir(ROOT)) if f.endswith(".py")
             for function, _ in run_time_patches(os.path.join(ROOT, f))}
    assert found == REMAINING_PATCHES
    sample = tmp_path / "sample.py"   # the check sees what it looks for
    sample.write_text("import paddle\nimport network as net\n\ndef f(layer):\n    paddle.tanh = None\n"
                      "    net.upsample, x = None, 1\n    layer.forward = None\n    setattr(paddle, 'exp', None)\n")
    assert run_time_patches(str(sample)) == {("f", "paddle.tanh"), ("f", "net.upsample"), ("f", "layer.forward"),
                                             ("f", "setattr(paddle, ...)")}
