"""The tenant HTTP API (Starlette)."""
