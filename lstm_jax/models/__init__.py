"""Models built from the core cells and layers."""
