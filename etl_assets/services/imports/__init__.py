"""The ingest pipeline: from a file placed in the inbox to rows in the warehouse."""
