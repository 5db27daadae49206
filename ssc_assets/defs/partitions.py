"""Partitions: one dynamic partition per plate, added by :mod:`ssc_assets.defs.sensors`."""

import dagster as dg

plates = dg.DynamicPartitionsDefinition(name="plates")
