"""Tests of the tenant HTTP API against real servers."""
