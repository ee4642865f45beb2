"""Model weights (packaged, local folder or hub id) and the sentence embedder."""
