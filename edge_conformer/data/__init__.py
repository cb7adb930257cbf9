"""Data: lhotse manifests, audio loading, log-mel features, SpecAugment, tokenizer, DataModule."""
