"""Training: one loop for the demo and fine-tuning, distributed fine-tuning, data loaders."""
