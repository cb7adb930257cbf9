"""The host runtime: checkpoints and export bundles loaded for inference, front end,
windowing and transcription. Imports neither Lightning nor the export pipeline."""
