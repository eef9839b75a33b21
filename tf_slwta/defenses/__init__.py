"""Defenses: adversarial-training mixtures and randomized smoothing."""
