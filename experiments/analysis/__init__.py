"""Looking inside trained and untrained networks: ``gradient_flow``, ``gate_activity`` (with ``gate_units`` and ``analysis_figures``) and ``grad_check`` (hand BPTT against ``jax.grad``)."""
