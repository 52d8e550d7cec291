"""The reference runs (tests/reference.py) still compute what they computed when recorded.

Recorded before the training loop was reshaped into methods and a registry (issue 12), on
the code of commit b69e01c (the training code of 24cd024), each scenario in a fresh process
with one thread. Every scenario is compared bit for bit: weights, BatchNorm
statistics and optimizer moments by SHA-256, and every logged number; the reshaping kept
each computation in its order, so nothing needs a float tolerance.

dcgan-static was recorded again in issue 15, when its transposed convolutions moved to oneDNN's
convolution kernels (faststep.transposed_convs_as_convs): the same computation in another float
order. Every logged number stayed the same; each tensor's sum moved by at most 5e-7 of itself.

Bit identity holds per kind of CPU (reference.machine(): MKL and oneDNN choose kernels by instruction
set), so each kind has its own recording, and a run is also compared with the other kinds' recordings to
float tolerance. The AVX2 recording was added on 2026-12-07 from the code of commit 9555d7e, whose runs
match the AVX-512 recording within reference.assert_close's tolerance.
"""
import pytest

import reference


@pytest.fixture(scope="module")
def recordings():
    return reference.load()


def test_machine_names_the_vendor_and_the_best_instruction_set(tmp_path):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nvendor_id\t: AuthenticAMD\nflags\t\t: fpu sse4_2 avx avx2 avx512f "
                       "avx512_bf16 fma\n\nprocessor\t: 1\n")
    assert reference.machine(str(cpuinfo)) == "AuthenticAMD avx512_bf16"
    cpuinfo.write_text("vendor_id\t: GenuineIntel\nflags\t\t: fpu sse4_2 avx avx2\n")
    assert reference.machine(str(cpuinfo)) == "GenuineIntel avx2"
    assert reference.machine(str(tmp_path / "none")) == "unknown baseline"


def test_assert_close_catches_a_changed_number(recordings):
    want = next(iter(recordings.values()))["dcgan-dygraph"]["whole"]
    reference.assert_close(want, want)
    changed = {**want, "log": [{**want["log"][0], "loss_D": want["log"][0]["loss_D"] * 1.01}, *want["log"][1:]]}
    with pytest.raises(AssertionError):
        reference.assert_close(changed, want)
    part = want["tensors"]["G"]
    key = next(iter(part))
    moved = {**want, "tensors": {**want["tensors"], "G": {**part, key: [part[key][0], part[key][1] + 0.01]}}}
    with pytest.raises(AssertionError):
        reference.assert_close(moved, want)


@pytest.mark.parametrize("name", sorted(reference.SCENARIOS))
def test_reference_run_matches_every_machines_recording(name, recordings, lfw8, tmp_path):
    """Bit for bit against this kind of CPU's recording; to float tolerance against the others'."""
    result = reference.record_apart(name, lfw8, str(tmp_path))
    here = reference.machine()
    for kind, expected in recordings.items():
        if kind != here:
            reference.assert_close_to_recording(result, expected[name], name)
    if here in recordings:
        assert_bit_identical(result, recordings[here][name])
    # the run resumed mid-epoch from the iteration-10 snapshot ends where the whole run does, on any machine
    assert result["resumed"]["tensors"] == result["whole"]["tensors"]
    assert result["resumed"]["method"] == result["whole"]["method"]
    assert result["resumed"]["log"] == result["whole"]["log"][reference.RESUME_AT:]


def assert_bit_identical(result, want):
    # state added since the recording (ADA's p, LeCam's averages; PG-GAN's start_phase, 0 but after --init-from)
    # is compared between the runs only
    whole, added = reference.recorded_part(result["whole"], want["whole"])
    assert added <= {"ada", "lecam", "start_phase"}, added
    resumed, _ = reference.recorded_part(result["resumed"], want["resumed"])
    assert result["resumed"]["method"] == result["whole"]["method"]
    assert whole["position"] == want["whole"]["position"]
    assert whole["method"] == want["whole"]["method"]
    assert whole["log"] == want["whole"]["log"]
    for part, tensors in want["whole"]["tensors"].items():
        assert whole["tensors"][part] == tensors, part
    assert set(whole["tensors"]) == set(want["whole"]["tensors"])
    # the run resumed mid-epoch from the iteration-10 snapshot ends where the whole run does
    assert resumed["tensors"] == whole["tensors"] and resumed["method"] == whole["method"]
    assert resumed["log"] == whole["log"][reference.RESUME_AT:]
