"""Long-range memory: ``long_range`` (adding and copy tasks over lengths and cells) and ``sweeps`` (its tables, merges and figures)."""
