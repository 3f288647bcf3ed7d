"""One dynamic partition per registered upload, keyed by its upload id."""

import dagster as dg

from etl_assets.services.contract import Kind

product_upload_partitions = dg.DynamicPartitionsDefinition(name="product_uploads")
sales_upload_partitions = dg.DynamicPartitionsDefinition(name="sales_uploads")

PARTITIONS_BY_KIND: dict[Kind, dg.DynamicPartitionsDefinition] = {
    "products": product_upload_partitions,
    "sales": sales_upload_partitions,
}
