"""The reference runs (tests/reference.py) still compute what they computed when recorded.

Recorded before the training loop was reshaped into methods and a registry (issue 12), on
the code of commit b69e01c (the training code of 24cd024), each scenario in a fresh process
with one thread. Every scenario is compared bit for bit: weights, BatchNorm
statistics and optimizer moments by SHA-256, and every logged number; the reshaping kept
each computation in its order, so nothing needs a float tolerance.

dcgan-static was recorded again in issue 15, when its transposed convolutions moved to oneDNN's
convolution kernels (faststep.transposed_convs_as_convs): the same computation in another float
order. Every logged number stayed the same; each tensor's sum moved by at most 5e-7 of itself.
"""
import json

import pytest

import reference


@pytest.fixture(scope="module")
def expected():
    with open(reference.FIXTURE) as f:
        return json.load(f)


@pytest.mark.parametrize("name", sorted(reference.SCENARIOS))
def test_reference_run_is_bit_identical(name, expected, lfw8, tmp_path):
    result = reference.record_apart(name, lfw8, str(tmp_path))
    want = expected[name]
    # state added since the recording (issue 14: ADA's p, LeCam's averages) is compared between the runs only
    whole, added = reference.recorded_part(result["whole"], want["whole"])
    assert added <= {"ada", "lecam"}, added
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
