"""Console entry points; no logic of their own."""
