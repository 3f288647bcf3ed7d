"""Figures: the sales of a local day, summed per day (daily_sales) and per window (metrics)."""
