"""Which LSTM units gate_activity.py shows, and on which text: per-character properties of the text
(:func:`text_features`), the units whose cell state tracks them (:func:`choose_units`), and the displayed
stretch of a text with the characters read before it (:func:`text_stretch`).
"""

from __future__ import annotations

import numpy as np

__all__ = ["choose_units", "correlations", "text_features", "text_stretch"]


def text_stretch(text: str, offset: float, warmup: int, span: int) -> tuple[int, str]:
    """``(start, chunk)``: the stretch starts at ``offset`` (a fraction of ``text``, or an absolute character
    index if >= 1) moved to the next line start; ``chunk`` is its ``warmup`` characters before and ``span``
    characters from ``start``. SystemExit (one line) if that does not fit in the text."""
    start = int(offset) if offset >= 1 else int(offset * len(text))
    start = text.index("\n", start) + 1 if "\n" in text[start:] else start
    if start - warmup < 0 or start + span > len(text):
        raise SystemExit("error: the stretch (with warmup) does not fit in the text; change --offset")
    return start, text[start - warmup : start + span]


def text_features(text: str) -> dict[str, np.ndarray]:
    """Simple per-character properties of the text a unit's cell state may track."""
    pos, in_name = [], []
    lines = text.split("\n")
    for li, line in enumerate(lines):
        name_line = line.strip().endswith(":") and line.strip()[:-1].replace(" ", "").isupper()
        chars = line + ("\n" if li < len(lines) - 1 else "")
        for k, _ in enumerate(chars):
            pos.append(k)
            in_name.append(1.0 if name_line else 0.0)
    return {
        "position in line": np.array(pos[: len(text)], float),
        "speaker-name line": np.array(in_name[: len(text)], float),
        "space": np.array([c == " " for c in text], float),
    }


def correlations(values: np.ndarray, feature: np.ndarray) -> np.ndarray:
    """Pearson correlation of every unit's values ``(T, H)`` with a feature ``(T,)``."""
    v = values - values.mean(axis=0)
    f = feature - feature.mean()
    denom = np.sqrt((v**2).sum(axis=0) * (f**2).sum()) + 1e-12
    return (v * f[:, None]).sum(axis=0) / denom


def choose_units(layer: dict, text: str, k: int = 4) -> tuple[list[int], dict]:
    """``auto`` units: for each :func:`text_features` feature the unit whose tanh(c)
    correlates most (in absolute value) with it, then fill up to ``k`` with the
    highest-mean-forget-gate units among those whose tanh(c) actually varies
    (std > 0.1), i.e. slow "memory" units that are not stuck at saturation."""
    tc = np.tanh(np.asarray(layer["cell"]))
    feats = text_features(text)
    units, why = [], {}
    for name, f in feats.items():
        r = correlations(tc, f)
        order = np.argsort(-np.abs(r))
        u = int(next(u for u in order if u not in units))
        units.append(u)
        why[u] = f"tanh(c) vs {name}: r = {r[u]:+.2f}"
    f_mean = np.asarray(layer["forget"]).mean(axis=0)
    moving = tc.std(axis=0) > 0.1
    for u in np.argsort(-f_mean):
        if len(units) >= k:
            break
        if moving[u] and int(u) not in units:
            units.append(int(u))
            why[int(u)] = f"slow memory unit: mean f = {f_mean[u]:.2f}, std tanh(c) = {tc[:, u].std():.2f}"
    return units[:k], why
