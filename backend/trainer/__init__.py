"""Everything that imports torch: models, losses, optimisation, data, the training loop."""
