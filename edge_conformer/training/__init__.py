"""Lightning training: the CTC LightningModule, schedules, callbacks and run results."""
