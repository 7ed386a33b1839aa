"""Copy a run's figures to a second place (e.g. ``docs/figures``), the one way every script does it."""

from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence

__all__ = ["copy_figures"]


def copy_figures(src_dir: str | Path, dest: str | Path | None, names: Sequence[str] | Mapping[str, str]) -> list[Path]:
    """Copy files from ``src_dir`` into the folder ``dest`` (created if missing); ``dest=None`` copies nothing.

    ``names``: file names kept as they are, or ``{source name: destination name}``.
    Returns the written paths.
    """
    if dest is None:
        return []
    pairs = names.items() if isinstance(names, Mapping) else ((n, n) for n in names)
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    written = []
    for src_name, dest_name in pairs:
        target = dest / dest_name
        target.write_bytes((Path(src_dir) / src_name).read_bytes())
        written.append(target)
    return written
