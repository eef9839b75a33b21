"""Training: strategies, losses, the custom distributed loop and checkpoints."""
