"""Featurizers: turn task inputs into model features (text: TF-IDF and static embeddings; tabular)."""
