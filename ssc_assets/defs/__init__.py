"""Thin Dagster layer: assets, resources, IO managers, sensors and jobs over :mod:`ssc_assets.core`."""
