"""Training: one loop for the demo and fine-tuning, and distributed fine-tuning."""
