"""Fixtures of the filter-stage tests (data and helpers live in ``filter_stage_data``)."""

from filter_stage_data import built_filter_dataset, raw_filter_dataset, tiny_rm  # noqa: F401
