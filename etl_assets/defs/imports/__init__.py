"""Imports: the `products` and `sales` tables, their job and the upload sensor."""
