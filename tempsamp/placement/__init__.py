"""Placement: cluster shape + config -> placement groups and bundles per role."""
