"""Latency on a device: profiling orchestration, stored and offline
prediction, validation, memory."""
