"""Corpus preparers: each turns a corpus into lhotse cut manifests plus training texts."""
