"""edge-conformer: Conformer-CTC recipes for speech recognition on extreme edge devices."""

__version__ = "0.1.0"
