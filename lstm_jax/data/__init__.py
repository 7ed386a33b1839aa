"""Datasets: text, images, synthetic tasks."""
