"""Figures: whether they can be drawn here, and copying a run's figures to a second place (e.g. ``docs/figures``).

Plots are conveniences (every number is in the JSON next to them): without
matplotlib a script says so and carries on (:func:`can_plot`), and
:func:`copy_figures` leaves out the figures that were never drawn.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Mapping, Sequence

__all__ = ["can_plot", "copy_figures", "matplotlib_installed", "pyplot", "save_figure"]


def matplotlib_installed() -> bool:
    """Whether matplotlib can be imported (checked without importing it)."""
    try:
        return importlib.util.find_spec("matplotlib") is not None
    except (ImportError, ValueError):
        return False


def can_plot(path) -> bool:
    """``True`` if matplotlib is installed; otherwise print that the figure ``path`` is skipped and return ``False``."""
    if matplotlib_installed():
        return True
    print(f"figure {path} skipped: matplotlib is not installed", flush=True)
    return False


def pyplot(path):
    """``matplotlib.pyplot`` on the file backend (Agg), or ``None`` when :func:`can_plot` says the figure
    ``path`` is skipped. Imported here, on first use: a run that draws nothing never loads matplotlib."""
    if not can_plot(path):
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(plt, fig, path, **savefig_kwargs) -> None:
    """Lay out ``fig``, write it to ``path`` (``savefig_kwargs``: e.g. ``dpi``) and free it."""
    fig.tight_layout()
    fig.savefig(path, **savefig_kwargs)
    plt.close(fig)


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
        if not (Path(src_dir) / src_name).exists() and not matplotlib_installed():
            continue  # never drawn: can_plot said so
        target = dest / dest_name
        target.write_bytes((Path(src_dir) / src_name).read_bytes())
        written.append(target)
    return written
