"""Each FSDD speaker's recording level and long-term spectrum: what per-utterance normalisation
removes and a streamable normalisation (global statistics) leaves for the model to cope with.

    python benchmarks/speaker_levels.py [--fsdd-dir ../shared/data/fsdd]

Per speaker, over all their recordings: the mean and spread of the RMS level (dB full scale),
and the long-term power spectrum in eight equal bands from 0 to 4 kHz, in dB relative to the
lowest band (the spectral tilt an equaliser, data.augment.eq, imitates).
"""

from __future__ import annotations

import argparse
import os
from collections import defaultdict
from pathlib import Path

import numpy as np
import soundfile as sf

BANDS = 8
FFT_LENGTH = 4096


def level_db(audio: np.ndarray) -> float:
    return float(20 * np.log10(np.sqrt(np.mean(audio**2)) + 1e-9))


def band_spectrum_db(audio: np.ndarray) -> np.ndarray:
    """Power in BANDS equal bands from 0 to Nyquist, dB relative to the lowest."""
    power = np.abs(np.fft.rfft(audio, n=FFT_LENGTH)) ** 2
    bands = 10 * np.log10(np.array([b.sum() for b in np.array_split(power, BANDS)]) + 1e-12)
    return bands - bands[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--fsdd-dir", default=os.environ.get("FSDD_DIR", "../shared/data/fsdd"))
    args = parser.parse_args()
    recordings = sorted(Path(args.fsdd_dir, "recordings").glob("*.wav"))
    if not recordings:
        raise SystemExit(f"{args.fsdd_dir}/recordings: no .wav files (set --fsdd-dir)")
    levels: dict[str, list[float]] = defaultdict(list)
    spectra: dict[str, list[np.ndarray]] = defaultdict(list)
    for path in recordings:
        speaker = path.stem.split("_")[1]  # <digit>_<speaker>_<take>.wav
        audio, _ = sf.read(path, always_2d=True)
        audio = audio.mean(axis=1)
        levels[speaker].append(level_db(audio))
        spectra[speaker].append(band_spectrum_db(audio))
    band_khz = 4 / BANDS
    header = " | ".join(f"{i * band_khz:g}-{(i + 1) * band_khz:g} kHz" for i in range(BANDS))
    print(f"| speaker | recordings | level dBFS (mean +- std) | {header} |")
    print("|---|---|---|" + "---|" * BANDS)
    for speaker in sorted(levels):
        spectrum = " | ".join(f"{v:.0f}" for v in np.mean(spectra[speaker], axis=0))
        print(f"| {speaker} | {len(levels[speaker])} | {np.mean(levels[speaker]):.1f} +- "
              f"{np.std(levels[speaker]):.1f} | {spectrum} |")


if __name__ == "__main__":
    main()
