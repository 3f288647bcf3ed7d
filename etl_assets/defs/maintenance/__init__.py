"""Maintenance: pull, cleanup, the health check and run-failure alerts."""
