"""Scoring lines: losses and reference metrics on targets, and the character-fidelity classifier with its cache, scenes, style figures and comparisons."""
