"""The greedy argmax kernel (vlm_argmax_rows) against numpy: rows split across blocks, ties, -inf and NaN.
Needs a CUDA GPU."""
import numpy as np
import pytest

from vlmserve.errors import InvalidArgumentError

pytestmark = pytest.mark.gpu


def reference(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """First index of each row's largest non-NaN value (0 and -inf for a row of NaNs)."""
    index, value = [], []
    for row in x:
        ok = np.flatnonzero(~np.isnan(row))
        i = int(ok[np.argmax(row[ok])]) if ok.size else 0
        index.append(i)
        value.append(row[i] if ok.size else -np.inf)
    return np.array(index, np.int32), np.array(value, np.float32)


def run(x: np.ndarray):
    import torch

    from vlmserve.kernels import argmax_rows

    index, value = argmax_rows(torch.from_numpy(x).cuda())
    torch.cuda.synchronize()
    return index.cpu().numpy(), value.cpu().numpy()


@pytest.mark.parametrize("rows,vocab", [(1, 7), (3, 4096), (2, 4097), (1, 92544), (64, 92544), (5, 151936),
                                        (2, 300001)])
def test_matches_reference(rows, vocab):
    rng = np.random.default_rng(rows * 1_000_003 + vocab)
    x = rng.normal(size=(rows, vocab)).astype(np.float32)
    index, value = run(x)
    ref_i, ref_v = reference(x)
    np.testing.assert_array_equal(index, ref_i)
    np.testing.assert_array_equal(value, ref_v)  # the value itself, bit for bit


def test_ties_nan_and_infinity():
    vocab = 92544  # many slices: ties and NaNs fall in different ones
    x = np.random.default_rng(1).normal(size=(6, vocab)).astype(np.float32)
    x[0, [70000, 9000, 50000]] = 50.0             # a tie across slices: the first index wins
    x[1, :] = -np.inf                             # all -inf: index 0
    x[2, :] = np.nan                              # all NaN: index 0, value -inf
    x[3, ::2] = np.nan                            # NaNs never win
    x[3, 1] = 100.0
    x[4, :] = np.nan
    x[4, 80000] = -np.inf                         # NaNs and one -inf: the -inf
    x[5, 12345] = np.inf                          # +inf wins
    index, value = run(x)
    ref_i, ref_v = reference(x)
    assert ref_i.tolist() == [9000, 0, 0, 1, 80000, 12345]
    np.testing.assert_array_equal(index, ref_i)
    np.testing.assert_array_equal(value, ref_v)


def test_repeated_calls_agree():
    # Each call gets a fresh, uninitialised workspace (the entry point zeroes the counters it needs).
    x = np.random.default_rng(2).normal(size=(8, 92544)).astype(np.float32)
    a, b = run(x), run(x)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[0], reference(x)[0])


def test_bad_input_is_refused():
    import torch

    from vlmserve.kernels import argmax_rows

    with pytest.raises(InvalidArgumentError, match="float32"):
        argmax_rows(torch.zeros(2, 10, dtype=torch.float16, device="cuda"))
    with pytest.raises(InvalidArgumentError, match="contiguous"):
        argmax_rows(torch.zeros(10, 2, device="cuda").t())
