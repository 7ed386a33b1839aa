"""Character-level language modelling: ``char_lstm`` (train, sample, eval) and ``char_runs`` (its data, model and report)."""
