"""ssc-assets: Dagster platform from ImageXpress plates to SSc patient clusterings."""

__version__ = "0.1.0"
