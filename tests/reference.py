"""Reference runs: what training computes, recorded so that a change of shape cannot change it.

Each scenario trains 20 seeded iterations on the 8x8 built-in faces, logging every iteration
and keeping a snapshot at iteration 10; a second run resumes from that snapshot into another
folder and trains to 20. Recorded: every log record (all numbers but the timing), the position
and method state in the final checkpoint, and per tensor of every network and optimizer a
SHA-256 of its bytes (bit identity) and its float64 sum (for float tolerance).

Only what a user sees is used (TrainConfig fields, train.train, checkpoint files, log.jsonl),
so the recording survives any reshaping of the code behind them.

Each scenario runs in a fresh process with one thread (OMP_NUM_THREADS=1). A process that
built faststep's static program before computes Paddle's eager step in another float order,
and with two threads the last bits of a run changed with what the test session had run
before (MKL and oneDNN divide work among threads as they find them): one thread in a fresh
process gives the same bits every time.

Bit identity holds on one kind of CPU: MKL and oneDNN pick their kernels, and so their order of
sums, by the instruction sets they find (AVX-512 or AVX2 give other last bits from the first
convolution on). So tests/reference.json holds one recording per kind of CPU (`machine()`): a run
is compared bit for bit with its own machine's recording, and with every other machine's to float
tolerance (`assert_close`), so a change of computation shows on any machine. A machine's recording
is added once, from code whose runs are bit-identical with the first machine's recording there.

    python tests/reference.py            # compare the current code with tests/reference.json
    python tests/reference.py --write    # record it for this machine (before a change of shape, or for a
                                         # new kind of CPU; never to make a test pass)
"""
import hashlib
import json
import math
import os
import subprocess
import sys
import tempfile

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
FIXTURE = os.path.join(HERE, "reference.json")

# augment="none", lecam=0: what every architecture computed when recorded, whatever recipe it has since (issue 14)
COMMON = dict(epoch_images=64, log_every=1, sample_every=100, save_every=10, keep=20, device="cpu", seed=3,
              augment="none", lecam=0.0)
SCENARIOS = {
    "dcgan-static": dict(arch="dcgan", ema=False, epochs=5, batch_size=16, width=8, step="static"),
    "dcgan-dygraph": dict(arch="dcgan", ema=False, epochs=5, batch_size=16, width=8, step="dygraph"),
    "torchblog-tricks": dict(arch="torchblog", ema=False, epochs=5, batch_size=16, width=8, balance="margin",
                             optimizer="rmsprop", real_label=0.9, flip_labels=0.05, label_jitter=0.05,
                             step="dygraph"),  # recorded on the eager step, before the static one had tricks
    # a high learning rate, so that both skip rules of the margin balance fire within 20 iterations
    "dcgan-margin": dict(arch="dcgan", ema=False, epochs=5, batch_size=16, width=8, balance="margin", margin=0.4,
                         lr=0.02, real_label=0.9, step="dygraph"),  # as torchblog-tricks
    # 4 iterations at 4x4 (batch 16), 8 fading 8x8 in (batch 8), 8 stabilising: 10 is mid-fade
    "pggan-fade": dict(arch="pggan", size=8, epochs=3, phase_kimg=0.064, batch_sizes="4:16,8:8", z_dim=32,
                       fmap_base=32, fmap_max=16, step="dygraph"),  # 16, 8 channels (64 before issue 13's
    # official meaning); recorded on the eager step, before PG-GAN had a static one (issue 15)
}
RESUME_AT = 10


ISAS = ("amx_tile", "avx512_bf16", "avx512f", "avx2", "sse4_2")   # the kernels MKL and oneDNN choose between


def machine(cpuinfo="/proc/cpuinfo"):
    """The kind of CPU whose kernels a run's bits depend on: its vendor and best instruction set,
    e.g. 'AuthenticAMD avx2'."""
    import runtime
    vendor, flags = runtime.cpu_info(cpuinfo)
    return f"{vendor or 'unknown'} {next((isa for isa in ISAS if isa in flags), 'baseline')}"


# how far another machine's tensor sums may be from a recording, relative; dcgan-margin's learning rate of 0.02
# amplifies rounding over 20 iterations (D's first Adam moment's sum: 0.5% between AVX-512 and AVX2)
SUM_TOLERANCE = {"dcgan-margin": 1e-2}


def assert_close(got, want, rel=1e-4, sum_rel=1e-4):
    """A run's summary equal to another machine's recording to float tolerance: the same positions, method
    state keys, log fields and whole numbers (skips, counts), every logged float within `rel` of the
    recording's and every tensor's sum within `sum_rel` (both with that absolute floor: logged numbers have
    5 decimals, and sums may be near 0)."""
    assert got["position"] == want["position"]
    assert set(got["method"]) == set(want["method"])
    assert len(got["log"]) == len(want["log"])
    for i, (a, b) in enumerate(zip(got["log"], want["log"])):
        assert set(a) == set(b), i
        for k in b:
            if isinstance(b[k], float):
                assert math.isclose(a[k], b[k], rel_tol=rel, abs_tol=rel), (i, k, a[k], b[k])
            else:
                assert a[k] == b[k], (i, k)
    assert set(got["tensors"]) == set(want["tensors"])
    for part, tensors in want["tensors"].items():
        assert set(got["tensors"][part]) == set(tensors), part
        for key, (_, total) in tensors.items():
            have = got["tensors"][part][key][1]
            assert math.isclose(have, total, rel_tol=sum_rel, abs_tol=sum_rel), (part, key, have, total)


def assert_close_to_recording(result, recording, name):
    """Both runs ("whole", "resumed") of scenario `name` against another machine's recording of it (assert_close,
    with the scenario's tolerance for sums), the fields added since the recording left out."""
    for run in ("whole", "resumed"):
        got, _ = recorded_part(result[run], recording[run])
        assert_close(got, recording[run], sum_rel=SUM_TOLERANCE.get(name, 1e-4))


def digest(state):
    """{part: {key: [sha256 prefix, float64 sum]}} for the networks and optimizers of a checkpoint."""
    out = {}
    for part, value in sorted(state.items()):
        if part in ("G", "D", "G_ema") or part.startswith("opt_"):
            flat = {}
            for key, tensor in value.items():
                if isinstance(tensor, dict):  # optimizer: {parameter key: {state name: array}}
                    flat.update({f"{key}.{name}": v for name, v in tensor.items()})
                else:
                    flat[key] = tensor
            out[part] = {k: [hashlib.sha256(np.ascontiguousarray(v).tobytes()).hexdigest()[:16],
                             float(np.asarray(v, np.float64).sum())] for k, v in sorted(flat.items())}
    return out


def records(out):
    with open(os.path.join(out, "log.jsonl")) as f:
        return [{k: v for k, v in json.loads(line).items() if k != "img_per_s"} for line in f]


def summary(state, out):
    return {"position": {k: int(state[k]) for k in ("epoch", "batch", "iteration", "images_seen")},
            "method": json.loads(json.dumps(state["method"], default=float)),
            "log": records(out), "tensors": digest(state)}


def record(name, data, folder):
    """(the whole run's summary, the resumed run's summary) of scenario `name` on dataset `data`."""
    import checkpoint
    import train

    options = {**COMMON, **SCENARIOS[name]}
    whole = os.path.join(folder, name, "whole")
    resumed = os.path.join(folder, name, "resumed")
    train.train(train.TrainConfig(data=data, out=whole, **options))
    snapshot = os.path.join(whole, f"checkpoint-{RESUME_AT:07d}.pdparams")
    train.train(train.TrainConfig(data=data, out=resumed, resume=snapshot, **options))
    return (summary(checkpoint.load(os.path.join(whole, checkpoint.FILE)), whole),
            summary(checkpoint.load(os.path.join(resumed, checkpoint.FILE)), resumed))


def record_apart(name, data, folder):
    """record(), in a fresh Python process."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # one thread: the same float order whatever the machine does
    out = subprocess.run([sys.executable, __file__, "--run", name, data, folder], capture_output=True, text=True,
                         env=env)
    if out.returncode:
        raise RuntimeError(f"reference run {name} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def lfw8(folder):
    import pretreat
    out = os.path.join(folder, "lfw8")
    pretreat.build(pretreat.PretreatConfig(out=out, size=8))
    return out


def main(argv):
    if argv[:1] == ["--run"]:  # one scenario, for record_apart
        name, data, folder = argv[1:4]
        whole, resumed = record(name, data, folder)
        print(json.dumps({"whole": whole, "resumed": resumed}))
        return
    with tempfile.TemporaryDirectory() as tmp:
        data = lfw8(tmp)
        result = {name: record_apart(name, data, tmp) for name in SCENARIOS}
    here = machine()
    recordings = load()
    if "--write" in argv:
        recordings[here] = result
        tmp = FIXTURE + ".tmp"
        with open(tmp, "w") as f:
            json.dump(recordings, f, indent=1, sort_keys=True)
            f.write("\n")
        os.replace(tmp, FIXTURE)
        print(f"wrote this machine's recording ({here}) to {FIXTURE}")
        return
    for kind, expected in recordings.items():
        for name in SCENARIOS:
            if kind == here:
                for run in ("whole", "resumed"):
                    got, added = recorded_part(result[name][run], expected[name][run])
                    verdict = "bit-identical" if got == expected[name][run] else "DIFFERS"
                    print(f"[{kind}] {name:18} {run:8} {verdict}"
                          + (f" (fields added since the recording: {', '.join(sorted(added))})" if added else ""))
                continue
            try:
                assert_close_to_recording(result[name], expected[name], name)
                verdict = "equal to float tolerance"
            except AssertionError as e:
                verdict = f"DIFFERS ({e})"
            print(f"[{kind}] {name:18} both runs {verdict}")
    if here not in recordings:
        print(f"no recording for this machine ({here}): compared to float tolerance only")


def load():
    """{machine(): {scenario: {"whole": summary, "resumed": summary}}} of tests/reference.json."""
    with open(FIXTURE) as f:
        return json.load(f)


def recorded_part(summary_, expected):
    """(`summary_` with only the log fields and method state keys the recording has, the names left out):
    numbers that a later issue adds to the log or the checkpoint are additions, not changes."""
    added = set()
    log = []
    for got, want in zip(summary_["log"], expected["log"]):
        added |= set(got) - set(want)
        log.append({k: v for k, v in got.items() if k in want})
    log += summary_["log"][len(expected["log"]):]
    added |= set(summary_["method"]) - set(expected["method"])
    method = {k: v for k, v in summary_["method"].items() if k in expected["method"]}
    return {**summary_, "log": log, "method": method}, added


if __name__ == "__main__":
    main(sys.argv[1:])
