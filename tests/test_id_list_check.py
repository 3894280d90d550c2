"""shard_checks._check_id_lists (format 4's window_top synset_ids and rank_less), whose bounds are
now taken in one Arrow pass before any per-row work (issue 24's merge speed): each refusal names the
same first bad row as the naive rule, computed here list by list."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pytest

from convis_db.store.shard_checks import ShardError, _check_id_lists

N_SYN, K = 50, 4


def naive(lists: list) -> str | None:
    """The message part of the first refusal, by the rule order: lengths, then NULLs, then bounds."""
    for i, ids in enumerate(lists):
        if ids is not None and len(ids) != K:
            return f"row {i}: not a list of {K} ids"
    for i, ids in enumerate(lists):
        if ids is not None and any(v is None for v in ids):
            return f"row {i}: a NULL inside the list"
    for i, ids in enumerate(lists):
        if ids is not None and any(v < 0 or v >= N_SYN for v in ids):
            return f"row {i}: a value outside 0..{N_SYN - 1}"
    return None


def good(i: int) -> list[int]:
    return [(i * 7 + j) % N_SYN for j in range(K)]


CASES = {
    "all good": {},
    "a NULL list (rank_less with no ties)": {3: None},
    "too high at the end": {9: [1, 2, 3, N_SYN]},
    "negative in the middle": {5: [1, -1, 3, 4]},
    "two bad rows, the first named": {7: [N_SYN + 5, 0, 0, 0], 2: [0, 0, 0, -3]},
    "a NULL inside": {4: [1, None, 2, 3]},
    "a NULL inside and a value outside later": {6: [1, None, 2, 3], 1: [0, 0, 0, N_SYN]},
    "too short": {8: [1, 2, 3]},
    "the largest id": {0: [N_SYN - 1, 0, 1, 2]},
}


@pytest.mark.parametrize("kind", [pa.int32(), pa.int64(), pa.int16()])
@pytest.mark.parametrize("case", list(CASES))
def test_first_bad_row_as_the_naive_rule(case, kind):
    lists = [good(i) for i in range(10)]
    for row, value in CASES[case].items():
        lists[row] = value
    table = pa.table({"ids": pa.array(lists, pa.list_(kind))})
    expected = naive(lists)
    if expected is None:
        _check_id_lists(Path("t.parquet"), table, "ids", K, N_SYN)
    else:
        with pytest.raises(ShardError, match=rf"column ids, {expected}"):
            _check_id_lists(Path("t.parquet"), table, "ids", K, N_SYN)


def test_empty_and_all_null_columns_pass():
    for lists in ([], [None, None]):
        _check_id_lists(Path("t.parquet"), pa.table({"ids": pa.array(lists, pa.list_(pa.int32()))}), "ids", K, N_SYN)
