"""Spoken digits in voices that are not FSDD's: eSpeak NG, women's and men's variants of several
English accents, at drawn pitches and rates.

The synthesiser comes from PyPI with the project (`espeakng-loader` bundles libespeak-ng and its
data); where that wheel is missing, the system's `espeak-ng` binary (Debian: `apt-get install
espeak-ng`) is used instead. Each records its name and version in the split's stamp, since the
two (and two versions) do not synthesise the same samples.

The library keeps state between calls (its pitch flutter runs on across utterances, and it
draws breath noise from libc's rand()), so the same request sounds different depending on what
was synthesised before in the process. A preparation therefore synthesises its whole list, in
order and with seeded generators, in a fresh process: the same list always gives the same audio.
"""

from __future__ import annotations

import ctypes
import io
import json
import logging
import shutil
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import soundfile as sf

log = logging.getLogger(__name__)

# Accents and voice variants drawn from: eSpeak NG's English voices, its women's (f1-f5) and
# men's (m1-m7) variants.
ACCENTS = ("en-us", "en", "en-gb-scotland", "en-gb-x-rp", "en-029", "en-us-nyc")
FEMALE_VARIANTS = ("f1", "f2", "f3", "f4", "f5")
MALE_VARIANTS = ("m1", "m2", "m3", "m4", "m7")
PITCH_RANGE = (25, 75)  # eSpeak's 0-100 base pitch scale (50: the voice's own)
RATE_RANGE = (130, 200)  # words per minute (175: eSpeak's default)
HOW_TO_GET = "pip install espeakng-loader (a project dependency) or apt-get install espeak-ng"

# libespeak-ng's API (speak_lib.h, espeak_ng.h).
_SYNCHRONOUS = 2  # AUDIO_OUTPUT_SYNCHRONOUS: samples come to the callback
_RATE, _PITCH = 1, 3  # espeak_PARAMETER
_POS_CHARACTER = 1
_CALLBACK = ctypes.CFUNCTYPE(
    ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.c_void_p
)


@dataclass(frozen=True)
class Voice:
    accent: str
    variant: str
    pitch: int
    rate: int

    @property
    def name(self) -> str:
        """eSpeak's voice name: the accent with its variant."""
        return f"{self.accent}+{self.variant}"

    @property
    def speaker(self) -> str:
        return f"espeak-{self.name}-p{self.pitch}-r{self.rate}"


@dataclass(frozen=True)
class Request:
    text: str
    voice: Voice


def settings() -> dict:
    """What the voices are drawn from, for a preparation's stamp."""
    return {"accents": ACCENTS, "female": FEMALE_VARIANTS, "male": MALE_VARIANTS,
            "pitch": PITCH_RANGE, "rate": RATE_RANGE}


def synthesizer() -> str | None:
    """Which synthesiser this machine has, with its version ("espeakng-loader 1.52.0"), or None."""
    try:
        import espeakng_loader
    except ImportError:
        espeakng_loader = None
    if espeakng_loader is not None:
        lib = ctypes.CDLL(espeakng_loader.get_library_path())
        lib.espeak_Info.restype = ctypes.c_char_p
        return f"espeakng-loader {lib.espeak_Info(None).decode()}"
    if shutil.which("espeak-ng"):
        done = subprocess.run(["espeak-ng", "--version"], capture_output=True, text=True)
        return f"espeak-ng binary {done.stdout.split(':')[1].split()[0]}"
    return None


def synthesize(requests: list[Request]) -> tuple[list[np.ndarray], int]:
    """Float32 mono audio of each request, and its sample rate, synthesised in a fresh process
    (this module run as a script: nothing of the caller's is imported again)."""
    if not synthesizer().startswith("espeakng-loader"):
        return _synthesize_with_binary(requests)
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "audio.npz"
        subprocess.run([sys.executable, __file__, str(out)], check=True, text=True,
                       input=json.dumps([[r.text, asdict(r.voice)] for r in requests]))
        with np.load(out) as saved:
            return [saved[str(n)] for n in range(len(requests))], int(saved["rate"])


def _synthesize_with_library(requests: list[Request]) -> tuple[list[np.ndarray], int]:
    import espeakng_loader

    lib = ctypes.CDLL(espeakng_loader.get_library_path())
    rate = lib.espeak_Initialize(_SYNCHRONOUS, 0, espeakng_loader.get_data_path().encode(), 0)
    chunks: list[np.ndarray] = []

    def collect(samples, count, _events) -> int:
        if count > 0:
            chunks.append(np.ctypeslib.as_array(samples, shape=(count,)).copy())
        return 0

    callback = _CALLBACK(collect)  # kept referenced while the library may call it
    lib.espeak_SetSynthCallback(callback)
    lib.espeak_ng_SetRandSeed(ctypes.c_long(0))
    ctypes.CDLL(None).srand(0)
    audio = []
    for request in requests:
        if lib.espeak_SetVoiceByName(request.voice.name.encode()) != 0:
            raise ValueError(f"eSpeak NG has no voice {request.voice.name!r}")
        lib.espeak_SetParameter(_RATE, request.voice.rate, 0)
        lib.espeak_SetParameter(_PITCH, request.voice.pitch, 0)
        text = request.text.encode()
        chunks.clear()
        lib.espeak_Synth(text, len(text) + 1, 0, _POS_CHARACTER, 0, 0, None, None)
        lib.espeak_Synchronize()
        audio.append(np.concatenate(chunks).astype(np.float32) / 32768)
    return audio, rate


def _synthesize_with_binary(requests: list[Request]) -> tuple[list[np.ndarray], int]:
    audio, rate = [], 0
    for request in requests:
        voice = request.voice
        wav = subprocess.run(
            ["espeak-ng", "-v", voice.name, "-p", str(voice.pitch), "-s", str(voice.rate),
             "--stdout", request.text], capture_output=True, check=True,
        ).stdout
        samples, rate = sf.read(io.BytesIO(wav), dtype="float32")
        audio.append(samples)
    return audio, rate


def main() -> None:
    """Synthesise the JSON list of [text, voice fields] on stdin into the .npz named by argv."""
    requests = [Request(text, Voice(**voice)) for text, voice in json.load(sys.stdin)]
    audio, rate = _synthesize_with_library(requests)
    np.savez(sys.argv[1], rate=rate, **{str(n): a for n, a in enumerate(audio)})


if __name__ == "__main__":
    main()
