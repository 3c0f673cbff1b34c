"""Featurizers: turn task inputs into model features (text: TF-IDF and static embeddings; tabular).

The text feature sets are named here (light to import: `backend.config` validates the setting
without loading scikit-learn).
"""

TEXT_FEATURES = ("tfidf", "embedding", "tfidf+embedding")
DEFAULT_TEXT_FEATURES = "tfidf+embedding"
