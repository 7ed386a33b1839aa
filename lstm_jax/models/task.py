"""The one protocol for "what :func:`lstm_jax.train.fit` trains": a :class:`Task`.

A task bundles a model with its data's loss and its evaluation, the same way for the
character language model (:func:`lstm_jax.models.char_model.char_task`), the sequence
classifiers (:func:`lstm_jax.models.classifier.classifier_task`) and the long-range
regressors (:func:`lstm_jax.models.sequence_regressor.regressor_task`)::

    task.init(key)                                -> params
    task.loss(params, batch, key, model_state)    -> (loss, (model_state, metrics))   # fit's loss_fn
    task.validate(params, data)                   -> {name: float}   # cheap, every --eval-every steps
    task.evaluate(params, data)                   -> {name: float}   # the full report of a split
    task.report(figures)                          -> str             # one line of evaluate's figures

Every loss is :func:`lstm_jax.models.losses.cross_entropy` (or a mean squared error
for regression); every figure is a mean over all items of ``data`` (characters,
examples, sequences), so splits of different sizes compare.

Example (any task trains the same way)::

    >>> import jax
    >>> from lstm_jax.models.classifier import ClassifierConfig, classifier_task
    >>> from lstm_jax.models.spec import RecurrentSpec
    >>> task = classifier_task(ClassifierConfig(input_size=3, num_classes=2, spec=RecurrentSpec(hidden=4)))
    >>> params = task.init(jax.random.PRNGKey(0))
    >>> xs, ys = jax.numpy.ones((2, 5, 3)), jax.numpy.array([0, 1])
    >>> loss, (state, metrics) = task.loss(params, {"x": xs, "y": ys}, jax.random.PRNGKey(1), task.model_state)
    >>> figures = task.evaluate(params, (xs, ys))
    >>> figures["count"], round(figures["accuracy"] + figures["error"], 6)
    (2, 1.0)
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

__all__ = ["Task"]


@dataclasses.dataclass(frozen=True)
class Task:
    """What fit trains and what a run reports (see the module docstring for each callable's contract).

    ``metric``: the key of ``validate``'s figures that model selection minimises (fit's
    ``best_metric`` is ``"val_" + metric``). ``model_state``: fit's initial model state
    (``None``, or e.g. the recurrent state carried across windows in truncated BPTT).
    """

    init: Callable[[Any], Any]
    loss: Callable
    evaluate: Callable[[Any, Any], dict]
    validate: Callable[[Any, Any], dict] | None = None
    report: Callable[[dict], str] = lambda figures: ", ".join(f"{k} {v:.4f}" for k, v in figures.items()
                                                              if isinstance(v, float))
    metric: str = "loss"
    model_state: Any = None

    def eval_fn(self, data, prefix: str = "val_") -> Callable[[Any], dict]:
        """fit's ``eval_fn``: ``validate`` (else ``evaluate``) on ``data``, keys prefixed (``val_loss``)."""
        check = self.validate or self.evaluate
        return lambda params: {prefix + k: v for k, v in check(params, data).items() if isinstance(v, (int, float))}
