"""The corpus and its split: reading and validating records, sampling per character, conversations, near duplicates, leak checks, the validation split."""
