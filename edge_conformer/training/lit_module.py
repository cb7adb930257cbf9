"""The CTC LightningModule: loss, optimiser and schedule, greedy decoding, WER/CER."""

from __future__ import annotations

import re
import time
from collections import defaultdict
from dataclasses import asdict

import lightning as L
import torch
import torch.nn.functional as F

from edge_conformer.data.tokenizer import Tokenizer
from edge_conformer.decode import error_rates, greedy_ctc_decode
from edge_conformer.model import ConformerCTC
from edge_conformer.model.streaming import ChunkContext
from edge_conformer.records import ErrorRates
from edge_conformer.training.activations import ActivationMaxAbs
from edge_conformer.training.chunking import DynamicChunks
from edge_conformer.training.rng import restore_rng_states, rng_states
from edge_conformer.training.schedules import lr_schedule, optimizer_factory

SAMPLE_TRANSCRIPTS = 10
LHOTSE_DUPLICATE = re.compile(r"_dup\d+$")  # lhotse.dataset.sampling.base.mark_as_duplicate


def _no_outputs() -> dict[str, list[str]]:
    return {"ids": [], "refs": [], "hyps": []}


def _all_ranks(outputs: dict[str, list[str]]) -> dict[str, list[str]]:
    """Every rank's decoded utterances, each once: under DDP the lhotse sampler gives each rank
    a share of an evaluation set, and repeats cuts as "<id>_dup<n>" so that every rank gets a
    batch at the end."""
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return outputs
    shares: list = [None] * torch.distributed.get_world_size()
    torch.distributed.all_gather_object(shares, outputs)
    merged, seen = _no_outputs(), set()
    for share in shares:
        for utt_id, ref, hyp in zip(share["ids"], share["refs"], share["hyps"]):
            utt_id = LHOTSE_DUPLICATE.sub("", utt_id)
            if utt_id not in seen:
                seen.add(utt_id)
                merged["ids"].append(utt_id)
                merged["refs"].append(ref)
                merged["hyps"].append(hyp)
    return merged


class CTCModule(L.LightningModule):
    def __init__(
        self,
        model: ConformerCTC,
        tokenizer: Tokenizer,
        optim: dict,
        test_names: list[str],
        checkpoint_extras: dict | None = None,
        streaming: DynamicChunks | None = None,
        seed: int = 0,
    ) -> None:
        super().__init__()
        self.model = model
        self.tokenizer = tokenizer
        self.optim = dict(optim)
        self.test_names = list(test_names)
        self.checkpoint_extras = checkpoint_extras or {}
        self.activations = ActivationMaxAbs(model)
        self.skipped_utterances = 0
        self._eval_outputs: dict[int, dict[str, list[str]]] = defaultdict(_no_outputs)
        # Dynamic chunk training (model.streaming); its draws are seeded by (seed, step).
        self.streaming = streaming if streaming is not None and streaming.enabled else None
        self.seed = seed
        self._stream_outputs: dict[int, dict[str, list[str]]] = defaultdict(_no_outputs)
        self.test_results: dict[str, ErrorRates] = {}
        # Training time and audio seen (all ranks), accumulated across resumes (in checkpoints).
        self.train_seconds = 0.0
        self.audio_seconds = 0.0
        self._fit_started = 0.0
        self._seconds_per_frame = 0.01

    def on_train_start(self) -> None:
        self._fit_started = time.perf_counter() - self.train_seconds
        datamodule = getattr(self.trainer, "datamodule", None)
        if datamodule is not None:
            features = datamodule.features
            self._seconds_per_frame = 1 / features.settings.frames_per_second

    def on_train_batch_end(self, outputs, batch, batch_idx: int) -> None:
        self.train_seconds = time.perf_counter() - self._fit_started

    def forward(
        self, features: torch.Tensor, lengths: torch.Tensor, context: ChunkContext | None = None
    ):
        return self.model(features, lengths, context)

    def _ctc_loss(self, logits, out_lengths, batch) -> torch.Tensor:
        # CTC in FP32 whatever the autocast precision: its log-sum-exp recursions underflow
        # in half precision. Sum over each utterance, mean over the batch (NeMo's mean_batch).
        log_probs = logits.float().log_softmax(dim=-1).transpose(0, 1)
        losses = F.ctc_loss(
            log_probs, batch["targets"], out_lengths, batch["target_lengths"],
            blank=0, reduction="none", zero_infinity=True,
        )
        return losses.mean()

    def training_step(self, batch: dict, batch_idx: int):
        self.skipped_utterances += batch["skipped"]
        if not batch["ids"]:
            return None
        log_every = self.trainer.log_every_n_steps if self.trainer else 1
        self.activations.enabled = self.global_step % log_every == 0
        context = self.streaming.draw(self.seed, self.global_step) if self.streaming else None
        logits, out_lengths = self(batch["features"], batch["feature_lengths"], context)
        self.activations.enabled = False
        loss = self._ctc_loss(logits, out_lengths, batch)
        size = len(batch["ids"])
        self.log("train/loss", loss, prog_bar=True, batch_size=size)
        self.log("train/lr", self.optimizers().param_groups[0]["lr"], batch_size=size)
        # Wall-clock seconds of training so far (validation included): the x axis on which
        # recipes compare time to accuracy (W&B: plot val/wer against it).
        self.log("train/seconds", self.train_seconds, batch_size=size)
        # Audio trained by all ranks together: every rank holds the same total, so the one
        # checkpoint (written by rank 0) restores it whole, and results report the job's rate.
        audio = batch["feature_lengths"].sum() * self._seconds_per_frame
        self.audio_seconds += float(self.all_gather(audio).sum())
        self.log("data/skipped_utterances", float(self.skipped_utterances), batch_size=size)
        if self.activations.values:
            self.log_dict(self.activations.metrics(), batch_size=size)
            self.activations.values = {}
        return loss

    def _decode_batch(self, batch: dict, dataloader_idx: int) -> torch.Tensor | None:
        if not batch["ids"]:
            return None
        logits, out_lengths = self(batch["features"], batch["feature_lengths"])
        self._collect(self._eval_outputs[dataloader_idx], batch, logits, out_lengths)
        if self.streaming is not None:  # the deployed chunk context, as a masked forward
            context = self.streaming.eval_context
            stream_logits, _ = self(batch["features"], batch["feature_lengths"], context)
            self._collect(self._stream_outputs[dataloader_idx], batch, stream_logits, out_lengths)
        return self._ctc_loss(logits, out_lengths, batch)

    def _collect(self, outputs: dict, batch: dict, logits, out_lengths) -> None:
        hyps = [self.tokenizer.decode(ids) for ids in greedy_ctc_decode(logits, out_lengths)]
        outputs["ids"] += batch["ids"]
        outputs["refs"] += batch["texts"]
        outputs["hyps"] += hyps

    def _stream_rates(self, dataloader_idx: int) -> dict[str, float]:
        """wer_stream and cer_stream of an evaluation set ({} when streaming is off)."""
        if self.streaming is None:
            return {}
        outputs = _all_ranks(self._stream_outputs.pop(dataloader_idx, _no_outputs()))
        rates = error_rates(outputs["refs"], outputs["hyps"])
        return {"wer_stream": rates["wer"], "cer_stream": rates["cer"]}

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        loss = self._decode_batch(batch, 0)
        if loss is not None:
            self.log("val/loss", loss, batch_size=len(batch["ids"]), sync_dist=True)

    def on_validation_epoch_end(self) -> None:
        outputs = _all_ranks(self._eval_outputs.pop(0, _no_outputs()))
        if not outputs["refs"]:
            return
        rates = error_rates(outputs["refs"], outputs["hyps"])
        self.log("val/wer", rates["wer"], prog_bar=True, sync_dist=True)
        self.log("val/cer", rates["cer"], sync_dist=True)
        for key, value in self._stream_rates(0).items():
            self.log(f"val/{key}", value, sync_dist=True)
        self._log_samples("val/samples", outputs)

    def test_step(self, batch: dict, batch_idx: int, dataloader_idx: int = 0) -> None:
        self._decode_batch(batch, dataloader_idx)

    def on_test_epoch_end(self) -> None:
        for idx, name in enumerate(self.test_names):
            outputs = _all_ranks(self._eval_outputs.get(idx, _no_outputs()))
            if not outputs["refs"]:  # every utterance of the set was skipped as bad data
                continue
            stream = self._stream_rates(idx)
            rates = ErrorRates(**error_rates(outputs["refs"], outputs["hyps"]),
                               utterances=len(outputs["refs"]), **stream)
            self.test_results[name] = rates
            self.log(f"test/{name}/wer", rates.wer, add_dataloader_idx=False)
            self.log(f"test/{name}/cer", rates.cer, add_dataloader_idx=False)
            for key, value in stream.items():
                self.log(f"test/{name}/{key}", value, add_dataloader_idx=False)
            self._log_samples(f"test/{name}/samples", outputs)
        self._eval_outputs.clear()
        self._stream_outputs.clear()

    def _log_samples(self, key: str, outputs: dict[str, list[str]]) -> None:
        """A table of reference vs hypothesis transcripts, for loggers that take tables."""
        if self.logger is None or not hasattr(self.logger, "log_text"):
            return
        rows = [[r, h] for r, h in zip(outputs["refs"], outputs["hyps"])][:SAMPLE_TRANSCRIPTS]
        self.logger.log_text(key=key, columns=["reference", "hypothesis"], data=rows)

    def configure_optimizers(self):
        # Both from the `_target_`s of conf/optim (edge_conformer/training/schedules.py).
        optimizer = optimizer_factory(self.optim)(self.parameters())
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_schedule(self.optim))
        schedule = {"scheduler": scheduler, "interval": "step"}
        return {"optimizer": optimizer, "lr_scheduler": schedule}

    # Checkpoints carry what export and transcription need (config, tokenizer), and the
    # global RNG states so that a resumed run draws the same dropout masks (training/rng.py).
    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["edge_conformer"] = {
            **self.checkpoint_extras,
            "tokenizer_model": self.tokenizer.model_path.read_bytes(),
            "skipped_utterances": self.skipped_utterances,
            "train_seconds": self.train_seconds,
            "audio_seconds": self.audio_seconds,
        }
        datamodule = getattr(self.trainer, "datamodule", None)
        if datamodule is not None and datamodule.features.stats is not None:
            # Inference must normalise features by the statistics training normalised them by.
            checkpoint["edge_conformer"]["feature_stats"] = asdict(datamodule.features.stats)
        checkpoint["rng_states"] = rng_states()

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        # Checkpoints written before rng_states carry only torch's CPU state, as "rng_state".
        legacy = {"torch": checkpoint["rng_state"]} if "rng_state" in checkpoint else {}
        restore_rng_states(checkpoint.get("rng_states", legacy))
        extras = checkpoint.get("edge_conformer", {})
        self.skipped_utterances = extras.get("skipped_utterances", 0)
        self.train_seconds = extras.get("train_seconds", 0.0)
        self.audio_seconds = extras.get("audio_seconds", 0.0)
