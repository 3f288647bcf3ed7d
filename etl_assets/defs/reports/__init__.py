"""Reports: the monthly sales report asset, its job and schedule, and the export job."""
