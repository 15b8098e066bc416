"""GLINT-RU and its baselines: models, data, training, evaluation, checkpoints."""
