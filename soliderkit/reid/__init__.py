"""The ReID core below both stages: parsers, transforms, embeddings, metrics, re-ranking, plots."""
