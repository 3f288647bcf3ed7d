"""Notifications: a signed JSON message to a company's notify_url when one of its uploads ends."""
