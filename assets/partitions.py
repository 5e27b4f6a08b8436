import dagster as dg

# One partition per domain update, e.g. 20261128-tooluse; added by the inbox sensor or the demo.
domain_updates = dg.DynamicPartitionsDefinition(name="domain_updates")
