"""Training: the trainer loop with hooks, solver, batched augmentation and checkpoints."""
