"""Comparing devices: layer costs, curves and the cross matrix of plans measured on every device; the report."""
