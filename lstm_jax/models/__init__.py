"""Models composed from the core cells and layers."""
