"""Deployment artifacts: ONNX with a parity check, TensorRT, input data for checks, atomic output folders."""
