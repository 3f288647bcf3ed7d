"""Notifications to tenants: a signed message when one of their uploads ends."""
