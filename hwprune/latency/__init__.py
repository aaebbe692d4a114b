"""Latency on a device: profiling orchestration, interleaved measurement, stored and offline
prediction, validation, memory."""
