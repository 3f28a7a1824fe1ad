"""What the model reads: prompts, token ids and label masks, micro-batches, the loss on supervised positions, and the audit of the text training shows."""
