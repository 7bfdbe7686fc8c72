#!/usr/bin/env python3
"""Independent reference for runmesh/silero-vad: onnxruntime running the shipped ONNX model.

Feeds the clip the way silero's own ONNX wrapper does: 512-sample chunks (the last zero-padded), each
after the 64 samples that precede it (zeros at the start), with the model's (2, 1, 128) state carried
from chunk to chunk. Shares no code with the node (no candle, its own WAV reading via `wave`).

usage: vad_reference.py MODEL.onnx CLIP.wav > probabilities.json
"""

import json
import sys
import wave

import numpy as np
import onnxruntime

CHUNK, CONTEXT = 512, 64


def main():
    model, clip = sys.argv[1], sys.argv[2]
    with wave.open(clip) as w:
        assert w.getnchannels() == 1 and w.getsampwidth() == 2 and w.getframerate() == 16000
        x = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2").astype(np.float32) / 32768
    opts = onnxruntime.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    sess = onnxruntime.InferenceSession(model, sess_options=opts, providers=["CPUExecutionProvider"])
    state = np.zeros((2, 1, 128), dtype=np.float32)
    context = np.zeros((1, CONTEXT), dtype=np.float32)
    sr = np.array(16000, dtype=np.int64)
    probs = []
    for start in range(0, len(x), CHUNK):
        chunk = x[start : start + CHUNK]
        chunk = np.pad(chunk, (0, CHUNK - len(chunk)))[None, :]
        inp = np.concatenate([context, chunk], axis=1)
        out, state = sess.run(None, {"input": inp, "state": state, "sr": sr})
        probs.append(float(out.reshape(-1)[0]))
        context = inp[:, -CONTEXT:]
    json.dump(probs, sys.stdout)


if __name__ == "__main__":
    main()
