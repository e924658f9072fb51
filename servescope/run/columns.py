"""A column of a run's table as a NumPy array, nulls and absent columns filled.

Runs recorded by older servescope versions lack the columns added since (``engine_index``, ``tp_rank``,
``pp_rank``, ...), and a null marks a value not recorded: readers that compute on arrays take the column with
one fill value for both.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc


def int_column(table: pa.Table, name: str, fill: int = 0) -> np.ndarray:
    """Return an int64 column, fill for nulls (a missing column is all fill)."""
    if name not in table.column_names:
        return np.full(table.num_rows, fill, dtype=np.int64)
    return pc.fill_null(table[name], fill).to_numpy(zero_copy_only=False).astype(np.int64)


def float_column(table: pa.Table, name: str) -> np.ndarray:
    """Return a float64 column, NaN for nulls (a missing column is all NaN)."""
    if name not in table.column_names:
        return np.full(table.num_rows, np.nan)
    return np.asarray(table[name].to_numpy(zero_copy_only=False), dtype=np.float64)
