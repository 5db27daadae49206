"""Pure computational core: numpy / pandas / torch only, no Dagster import.

Every algorithm of the pipeline lives here and is testable without Dagster.
"""
