"""The embeddings runtime: sentence encoders (BERT family, sentence-transformers folders) behind the bus."""
