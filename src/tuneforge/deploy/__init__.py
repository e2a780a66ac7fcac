"""Using a fine-tuned run: batch prediction (and later serving and export)."""
