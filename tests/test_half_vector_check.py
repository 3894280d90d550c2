"""shard_checks' float16 check (NaN/infinity found on the bits, issue 24's merge speed) against the
naive rule: np.isfinite on each vector's halves, for every kind of half."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from convis_db.store.shard_checks import ShardError, _check_half_vectors

SPECIAL = np.array([np.nan, -np.nan, np.inf, -np.inf, 0.0, -0.0, 65504.0, -65504.0, 6e-8, -6e-8, 6.1e-5, 1.0],
                   np.float16)


def naive_first_bad(vectors: np.ndarray) -> int | None:
    bad = ~np.isfinite(vectors.astype(np.float32)).all(axis=1)
    return int(np.argmax(bad)) if bad.any() else None


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("kind", [pa.binary(), pa.large_binary()])
def test_half_vector_check_equals_isfinite(seed, kind):
    rng = np.random.default_rng(seed)
    n, dim = 40, 8
    bits = rng.integers(0, 2**16, (n, dim), dtype=np.uint16)   # every half: NaN and infinities included
    if seed % 2:
        bits = rng.choice(SPECIAL[4:], (n, dim)).view(np.uint16)   # finite only, then a few specials
        for _ in range(seed // 2):
            bits[rng.integers(n), rng.integers(dim)] = SPECIAL[rng.integers(4)].view(np.uint16)
    vectors = bits.view(np.float16)
    col = pa.chunked_array([pa.array([v.tobytes() for v in vectors], kind)])
    expected = naive_first_bad(vectors)
    if expected is None:
        _check_half_vectors(Path("w.parquet"), "embedding_f16", col, dim)
    else:
        with pytest.raises(ShardError, match=rf"row {expected}: NaN or infinity in the vector"):
            _check_half_vectors(Path("w.parquet"), "embedding_f16", col, dim)


def test_every_half_value_classified_as_isfinite():
    """All 65,536 halves, one per vector: the bit rule agrees with np.isfinite on each."""
    halves = np.arange(2**16, dtype=np.uint32).astype(np.uint16)
    finite = np.isfinite(halves.view(np.float16))
    for bad in np.flatnonzero(~finite)[[0, -1]]:
        col = pa.chunked_array([pa.array([h.tobytes() for h in halves[np.concatenate([np.flatnonzero(finite)[:50],
                                                                                       [bad]])]], pa.binary())])
        with pytest.raises(ShardError, match="row 50: NaN or infinity"):
            _check_half_vectors(Path("w.parquet"), "embedding_f16", col, 1)
    col = pa.chunked_array([pa.array([h.tobytes() for h in halves[finite]], pa.binary())])
    _check_half_vectors(Path("w.parquet"), "embedding_f16", col, 1)   # every finite half passes
    assert int((~finite).sum()) == 2 * 1024   # exponent all ones: 2 signs x 1,024 mantissas (2 infinities, 2,046 NaNs)
