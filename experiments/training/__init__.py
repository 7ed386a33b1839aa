"""Training scripts: each trains one model family from a config file and flags (``--config configs/NAME.toml``)."""
