"""Checkpoint files: what they hold, writing them atomically, and reading them without running code.

A checkpoint is one `paddle.save` dict (so `paddle.load` reads it too), written to a temporary
file and renamed, so a crash at any moment leaves the previous file whole. Format 2 holds
everything a run needs to continue exactly: the training method's networks and optimizers
under their names ("G", "D", "G_ema"; "opt_G", "opt_D"; optimizer state keyed by the
networks' structure, not by Paddle's per-process parameter names), the random generators of
Paddle and numpy, the position in the data (epoch, batches done, that epoch's order), fixed
noise, config, dataset fingerprint, architecture and network arguments, the method's own
state, which network samples and at what stage ("sampler"), and the project version.
generator.py also reads format 1 (issue 2's) files.

`.pdparams` files are pickles, and unpickling can run code. `load` therefore unpickles with
an allow-list: dicts, lists, tuples, numbers, strings and numpy arrays, and no Paddle class, so
that a renamed Paddle class cannot make checkpoints unreadable. Anything else (a foreign or
tampered file) is refused before it runs. Paddle's random-generator state is stored as plain
numbers; checkpoints written before 0.6.0 pickled Paddle's GeneratorState object, which `load`
reads into those numbers without naming Paddle.

Example:
    state = load("output/checkpoint.pdparams")      # arrays, not Tensors
    G.set_state_dict(state["G"])
"""
import io
import os
import pickle
import re

import runtime  # noqa: F401  (before Paddle: thread and MKL settings)
import numpy as np
import paddle

from facedata import write_atomic
from runtime import ConfigError

__version__ = "0.6.0"

FILE = "checkpoint.pdparams"
FORMAT = "paddle-fakeface-checkpoint/2"
READABLE = ("paddle-fakeface-checkpoint/1", FORMAT)   # /1: issue 2's files, enough to generate from

# What a checkpoint's pickle may name: containers and numpy arrays.
ALLOWED = {
    ("collections", "OrderedDict"), ("builtins", "tuple"), ("builtins", "list"), ("builtins", "dict"),
    ("numpy", "ndarray"), ("numpy", "dtype"),
    ("numpy._core.multiarray", "_reconstruct"), ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "scalar"), ("numpy.core.multiarray", "scalar"),
}
# Before 0.6.0 the random state was Paddle's GeneratorState object, pickled under its class name in one of Paddle's
# modules; it is read as plain data, whichever module the Paddle of the day wrote.
LEGACY_GENERATOR_STATE = "GeneratorState"


class CheckpointError(Exception):
    """A checkpoint that is missing, damaged or not one of ours; the message says what to do."""


class _PickledGeneratorState:
    """What an old checkpoint's pickled GeneratorState unpickles to: its pickled state, as plain data."""

    def __setstate__(self, state):
        self.state = state


class _Unpickler(pickle.Unpickler):
    def find_class(self, module, name):
        if module.split(".")[0] == "paddle" and name == LEGACY_GENERATOR_STATE:
            return _PickledGeneratorState
        if (module, name) not in ALLOWED:
            raise CheckpointError(f"it refers to {module}.{name}, which no checkpoint of ours holds; "
                                  "refusing to unpickle it (load only checkpoints you trust)")
        return super().find_class(module, name)


def _arrays(obj):
    """paddle.save stores a Tensor as the tuple (name, ndarray): make those arrays again (and an old checkpoint's
    generator states the plain form that rng_state writes)."""
    if isinstance(obj, _PickledGeneratorState):
        return _plain_generator_state(obj.state)
    if isinstance(obj, tuple) and len(obj) == 2 and isinstance(obj[0], str) and isinstance(obj[1], np.ndarray):
        return obj[1]
    if isinstance(obj, dict):
        return {k: _arrays(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_arrays(v) for v in obj]
    return obj


def save(path, state):
    """paddle.save `state` into memory, then write it atomically and durably."""
    buf = io.BytesIO()
    paddle.save(state, buf)
    write_atomic(path, buf.getvalue(), durable=True)


def snapshot_name(iteration):
    """File name of the numbered snapshot that --keep keeps beside checkpoint.pdparams."""
    return f"checkpoint-{iteration:07d}.pdparams"


def prune_snapshots(folder, keep):
    """Delete all but the `keep` newest numbered snapshots in `folder`."""
    snaps = sorted(f for f in os.listdir(folder) if re.fullmatch(r"checkpoint-\d{7}\.pdparams", f))
    for name in snaps[:max(0, len(snaps) - keep)]:
        os.remove(os.path.join(folder, name))


def remove_stale_temporaries(folder):
    """Delete the temporary files of saves that a killed process left in `folder` (never a checkpoint)."""
    if not os.path.isdir(folder):
        return
    for name in os.listdir(folder):
        match = re.fullmatch(r"checkpoint.*\.pdparams\.tmp(\d+)", name)
        if match and not _alive(int(match.group(1))):  # a running process may still be writing its own
            os.remove(os.path.join(folder, name))


def _alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def load(path, formats=(FORMAT,)):
    """The checkpoint dict at `path`, tensors as numpy arrays; CheckpointError unless it is one of `formats`."""
    if not os.path.isfile(path):
        raise CheckpointError(f"no checkpoint at {path}: run `python train.py` first, or give its path")
    try:
        with open(path, "rb") as f:
            state = _arrays(_Unpickler(f).load())
    except CheckpointError as e:
        raise CheckpointError(f"cannot read {path}: {e}") from None
    except Exception as e:  # truncated or foreign files fail in many ways
        raise CheckpointError(f"cannot read checkpoint {path} ({type(e).__name__}): "
                              "it is truncated or not a paddle-fakeface checkpoint") from None
    if not isinstance(state, dict) or state.get("format") not in READABLE:
        raise CheckpointError(f"{path} is not a paddle-fakeface checkpoint")
    upgrade(state)
    if state["format"] not in formats:
        raise CheckpointError(f"{path} is an older checkpoint ({state['format']}) that cannot resume "
                              "training; generator.py still reads it. Start a new run with --resume never")
    return state


def fingerprint(manifest):
    """What a checkpoint records of its dataset, from the dataset's manifest."""
    return {k: manifest[k] for k in ("source", "count", "size")}


def check_compatible(state, arch, arch_args, manifest, path):
    """ConfigError unless checkpoint `state` holds networks like these, trained on this dataset."""
    if state["arch"] != arch or state["arch_args"] != arch_args:
        have = ", ".join(f"{k} {v}" for k, v in state["arch_args"].items())
        want = ", ".join(f"{k} {v}" for k, v in arch_args.items())
        raise ConfigError(f"{path} holds a {state['arch']} network ({have}), not the {arch} ({want}) this run "
                          "asks for: use another --out, or --resume never to start over here")
    if state["dataset"] != fingerprint(manifest):
        raise ConfigError(f"{path} was trained on {state['dataset']['source']} ({state['dataset']['count']} images), "
                          f"not {manifest['source']} ({manifest['count']}): pass its --data, or use another --out")


def sampler(state):
    """(weights key, network role, stage or None) that faces are drawn with, from a checkpoint.

    Checkpoints since issue 12 say it ("sampler"); older ones are read as they were written:
    G's moving average when there is one, and the progressive stage in the method's state.
    """
    if "sampler" in state:
        s = state["sampler"]
        return s["net"], s["role"], s["stage"]
    stage = state.get("method", {}).get("stage")
    return ("G_ema" if "G_ema" in state else "G"), "G", (
        None if stage is None else {"res": int(stage["res"]), "alpha": float(stage["alpha"])})


def upgrade(state):
    """Bring an older checkpoint's settings to this version's meaning, in place.

    Before 0.5.0, --fmap-base meant nf(res) = min(fmap_base / res, fmap_max); it now means the
    official nf(stage) = min(fmap_base / 2^stage, fmap_max), half the number for the same network.
    """
    version = tuple(int(v) for v in str(state.get("version", "0")).split(".") if v.isdigit())
    if version < (0, 5, 0):
        for args in (state.get("arch_args"), state.get("config")):
            if isinstance(args, dict) and args.get("fmap_base"):
                args["fmap_base"] //= 2


# ----------------------------------------------------------------------------- optimizer state

def _trained(net):
    """{structural key: parameter} of `net`'s trained parameters (not BatchNorm's running statistics)."""
    return {k: p for k, p in net.named_parameters() if p.trainable}


def ensure_optimizer_state(opt, net):
    """Give `opt` its state tensors for `net`'s trained parameters if it has none yet, so that they can take values.

    Paddle creates an optimizer's state at its first step, under names it makes up then; the one public way to
    create them is a step. So this is one step on zero gradients, which moves no weight (a first Adam or RMSProp
    update is a multiple of the gradient, here 0) and whose state set_optimizer_state then replaces."""
    if opt.state_dict():
        return
    params = list(_trained(net).values())
    opt.clear_grad()
    paddle.add_n([(p * 0).sum() for p in params]).backward()
    opt.step()
    opt.clear_grad()


def _state_names(opt, net):
    """{structural key: {state name (as "moment1"): the name of its tensor in opt.state_dict()}}.

    Paddle names a parameter's state tensor after it: parameter name, "_", state name, "_", a number."""
    names = {k: p.name for k, p in _trained(net).items()}
    by_param = {}
    for tensor in opt.state_dict():
        owner = max((n for n in names.values() if tensor.startswith(n + "_")), key=len, default=None)
        if owner is not None:
            by_param.setdefault(owner, {})[tensor[len(owner) + 1:].rsplit("_", 1)[0]] = tensor
    return {k: by_param[n] for k, n in names.items() if n in by_param}


def optimizer_state(opt, net):
    """{structural key: {state name: array}} of `opt`, which updates `net` (empty before its first step)."""
    state = opt.state_dict()
    return {k: {name: state[tensor].numpy() for name, tensor in entries.items()}
            for k, entries in _state_names(opt, net).items()}


def set_optimizer_state(opt, net, state):
    """Give `opt` the state that optimizer_state returned for the same network structure."""
    if not state:
        return
    params = _trained(net)
    if set(state) != set(params):
        raise CheckpointError(f"the optimizer state is for other parameters ({len(state)} vs {len(params)})")
    ensure_optimizer_state(opt, net)
    names = _state_names(opt, net)
    opt.set_state_dict({tensor: paddle.to_tensor(np.asarray(state[k][name]))
                        for k, entries in names.items() for name, tensor in entries.items()})


# ----------------------------------------------------------------------------- random state

def _plain_generator_state(pickled):
    """A Paddle generator state as plain data, from the state its pickling holds: (device, seed, offset, the
    engine's state as the bytes of its text)."""
    device, seed, offset, engine = pickled
    return {"device": int(device), "seed": int(seed), "offset": int(offset), "engine": np.asarray(engine, np.uint8)}


def rng_state():
    """Paddle's and numpy's global random state, as plain numbers and arrays."""
    return {"paddle": [_plain_generator_state(s.__getstate__()) for s in paddle.get_rng_state()],
            "numpy": np.random.get_state()}


def set_rng_state(state):
    """Put back the random state that rng_state returned."""
    kind = type(paddle.get_rng_state()[0])  # Paddle's generator-state class, rebuilt through its pickling
    generators = []
    for s in state["paddle"]:
        generator = kind.__new__(kind)
        generator.__setstate__((s["device"], s["seed"], s["offset"], [int(b) for b in s["engine"]]))
        generators.append(generator)
    paddle.set_rng_state(generators)
    np.random.set_state(state["numpy"])
