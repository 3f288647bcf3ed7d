"""Aggregates: the `daily_sales` asset, its job, refresh sensor and schedule, and the rebuild."""
