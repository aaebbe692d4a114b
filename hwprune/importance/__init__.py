"""Channel importance: one registry of criteria (magnitude, data-driven, DCP, CPMC) and the active-weight tables."""
