"""Reporting: the monthly report (model, queries, CSV/JSON/XML and PDF writers) and exports."""
