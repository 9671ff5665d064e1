"""The numpy backend's product for a few rows and a large weight (a batched decode step) equals
numpy's own product: blocks, worker threads and the BLAS thread limit change only the speed."""

from __future__ import annotations

import numpy as np
import pytest

from cpu_fallback import ops


@pytest.mark.parametrize("rows", [2, 3, 5, 16])
@pytest.mark.parametrize("shape", [(3001, 96), (257, 1030)])
def test_thin_product_equals_matmul(rows, shape, monkeypatch):
    rng = np.random.default_rng(rows)
    weight = rng.standard_normal(shape, dtype=np.float32)
    x = rng.standard_normal((rows, shape[1]), dtype=np.float32)
    taken = []
    monkeypatch.setattr(ops, "THIN_MIN_BYTES", 0)
    monkeypatch.setattr(ops, "_thin_linear", lambda *a, f=ops._thin_linear: taken.append(1) or f(*a))
    got = ops.linear(x, weight)
    assert taken, "the thin path did not run"
    want = x.astype(np.float64) @ weight.T.astype(np.float64)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-5 * np.abs(want).max())


def test_one_row_and_many_rows_take_numpys_product(monkeypatch):
    monkeypatch.setattr(ops, "THIN_MIN_BYTES", 0)
    monkeypatch.setattr(ops, "_thin_linear", lambda *a: pytest.fail("thin path taken"))
    weight = np.ones((300, 8), np.float32)
    for rows in (1, ops.THIN_ROWS + 1):
        assert (ops.linear(np.ones((rows, 8), np.float32), weight) == 8).all()
