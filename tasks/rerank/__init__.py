"""Re-ranking, shared by training (validation) and evaluation: features.py reads data/features/, prefixes.py caches
the image prefixes, scores.py scores the zero-shot candidates with the model and re-orders them."""
