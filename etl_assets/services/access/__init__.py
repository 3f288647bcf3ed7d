"""Who may use the tenant API: per-company bearer tokens."""
