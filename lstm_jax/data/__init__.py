"""Datasets for lstm_jax: text corpora (``text``), images as sequences, synthetic tasks."""
