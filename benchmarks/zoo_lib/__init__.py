"""Helpers of `benchmarks/zoo.py`: real-text corpora, tokenizers, tiny model training, derivatives, merges."""
