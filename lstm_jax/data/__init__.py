"""Input pipelines: text corpora (``text``, ``windows``), images as sequences (``images``, ``idx``,
``image_pipeline``, ``image_batches``) and the synthetic long-range tasks (``synthetic``); ``paths``
holds the one data folder rule.

Imports: NumPy, JAX and the data libraries only, nothing else of lstm_jax (the models build on this wing).
"""
