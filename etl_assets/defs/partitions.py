"""Partitions shared by domains: one dynamic partition per company (tenant) seen in the inbox."""

import dagster as dg

# Added by the upload sensor when it first offers an upload of a company, never removed by it.
companies = dg.DynamicPartitionsDefinition(name="companies")
