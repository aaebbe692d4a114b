"""The closed loop: select, cut, measure, correct; `prune` and its result; the public latency calls."""
