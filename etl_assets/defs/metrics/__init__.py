"""Dashboard metrics: the asset, its job and its schedule."""
