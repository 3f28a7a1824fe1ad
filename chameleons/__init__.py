"""Chameleons: fine-tune a language model to speak like a film character."""
