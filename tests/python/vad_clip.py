#!/usr/bin/env python3
"""Makes the test clip for runmesh/silero-vad: silence, a spoken phrase, silence, another phrase,
silence, at 16 kHz mono. Speech comes from espeak-ng (22050 Hz), resampled with numpy (FFT).

usage: vad_clip.py OUT_DIR > truth.json
  writes OUT_DIR/clip.wav (16-bit PCM) and OUT_DIR/clip_f32.wav (32-bit float, the same samples);
  truth.json: {"speech": [[start_s, end_s], ...], "duration": s, "samples": n}
"""

import json
import os
import struct
import subprocess
import sys
import tempfile
import wave

import numpy as np

RATE = 16000
PHRASES = [
    "The mesh runs models on many machines.",
    "Voice activity detection finds where people speak.",
]
SILENCES_S = [1.0, 1.2, 1.0]  # before, between, after


def speak(text):
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "s.wav")
        subprocess.run(["espeak-ng", "-v", "en", "-s", "150", "-w", path, text], check=True)
        with wave.open(path) as w:
            assert w.getnchannels() == 1 and w.getsampwidth() == 2, "espeak-ng output format"
            rate = w.getframerate()
            x = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2").astype(np.float64) / 32768
    # Band-limited resampling: keep the spectrum below the new Nyquist.
    n_out = int(round(len(x) * RATE / rate))
    spec = np.fft.rfft(x)[: n_out // 2 + 1]
    y = np.fft.irfft(spec, n_out) * (n_out / len(x))
    # espeak-ng pads with silence; keep only the voiced span so the truth is where the sound is.
    loud = np.nonzero(np.abs(y) > 0.01)[0]
    return y[loud[0] : loud[-1] + 1]


def main():
    out_dir = sys.argv[1]
    rng = np.random.default_rng(7)
    parts, speech, t = [], [], 0
    for i, silence in enumerate(SILENCES_S):
        n = int(silence * RATE)
        parts.append(rng.normal(0, 1e-3, n))  # a quiet room, not digital zero
        t += n
        if i < len(PHRASES):
            s = speak(PHRASES[i]) * 0.8
            parts.append(s)
            speech.append([t / RATE, (t + len(s)) / RATE])
            t += len(s)
    x = np.clip(np.concatenate(parts), -1, 32767 / 32768)
    pcm = np.round(x * 32768).astype("<i2")
    with wave.open(os.path.join(out_dir, "clip.wav"), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(RATE)
        w.writeframes(pcm.tobytes())
    # The same samples as 32-bit float (WAVE_FORMAT_IEEE_FLOAT = 3), written by hand: `wave` is PCM only.
    f32 = (pcm.astype(np.float32) / 32768).astype("<f4").tobytes()
    fmt = struct.pack("<HHIIHH", 3, 1, RATE, RATE * 4, 4, 32)
    with open(os.path.join(out_dir, "clip_f32.wav"), "wb") as f:
        f.write(b"RIFF" + struct.pack("<I", 4 + 8 + len(fmt) + 8 + len(f32)) + b"WAVE")
        f.write(b"fmt " + struct.pack("<I", len(fmt)) + fmt)
        f.write(b"data" + struct.pack("<I", len(f32)) + f32)
    json.dump({"speech": speech, "duration": len(pcm) / RATE, "samples": len(pcm)}, sys.stdout)


if __name__ == "__main__":
    main()
