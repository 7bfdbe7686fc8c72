#!/usr/bin/env python3
"""How much the float64 Gemma 3 reference (gemma_reference.py) moves under small activation errors.

The evidence behind docs/RUNNERS.md "Precision: why prefill runs on f32 weights"; a diagnostic, not
a test (it takes a few minutes here). For each case of gemma_reference.json:
- the top logit after the prompt when Gaussian noise of relative size eps (per row, against the row's
  RMS) is added to every normalized activation of the forward: a stand-in for the ~0.5 % that 8-bit
  rounding of matmul inputs costs;
- for the long case, the gain of layer 4's MLP (|d out| / |d in| for a small random perturbation of
  its input) at a few positions.

usage: gemma_sensitivity.py MODEL.gguf   (GEMMA_NOISE=0,1e-4,... picks the noise levels; empty: none)
"""

import json
import math
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import gemma_reference as gr  # noqa: E402

NOISE = [float(e) for e in os.environ.get("GEMMA_NOISE", "0,1e-4,1e-3,5e-3").split(",") if e]
GAIN_LAYER = 4
GAIN_POS = [5, 100, 510, 511, 512, 600, 680]
DIRECTIONS = 16


def main():
    m = gr.Model(sys.argv[1])
    here = os.path.dirname(os.path.abspath(__file__))
    cases = json.load(open(os.path.join(here, "gemma_reference.json")))
    exact_rms = m.rms

    for case in cases:
        ids = case["ids"]
        for eps in NOISE:
            rng = np.random.default_rng(1)

            def noisy_rms(x, w, eps=eps, rng=rng):
                y = exact_rms(x, w)
                if eps and y.ndim == 2:  # (tokens, features): the residual-stream norms
                    rms = np.sqrt(np.mean(y * y, axis=-1, keepdims=True))
                    y = y + eps * rng.standard_normal(y.shape) * rms
                return y

            m.rms = noisy_rms
            lg = m.logits(ids)
            m.rms = exact_rms
            top = int(np.argmax(lg))
            print("%d tokens, noise %g: top %d at %.3f" % (len(ids), eps, top, lg[top]), flush=True)

    # Layer GAIN_LAYER's MLP input, caught at its ffn_norm call during an exact forward.
    ids = max(cases, key=lambda c: len(c["ids"]))["ids"]
    p = "blk.%d." % GAIN_LAYER
    seen = {}

    def catching_rms(x, w):
        if w is m.w[p + "ffn_norm.weight"]:
            seen["x"] = x.copy()
        return exact_rms(x, w)

    m.rms = catching_rms
    m.logits(ids)
    m.rms = exact_rms
    w = m.w

    def mlp(x):
        h = m.rms(x, w[p + "ffn_norm.weight"])
        g = h @ w[p + "ffn_gate.weight"].T
        g = 0.5 * g * (1 + np.tanh(math.sqrt(2 / math.pi) * (g + 0.044715 * g**3)))
        return m.rms((g * (h @ w[p + "ffn_up.weight"].T)) @ w[p + "ffn_down.weight"].T, w[p + "post_ffw_norm.weight"])

    rng = np.random.default_rng(0)
    gains = []
    for pos in GAIN_POS:
        x = seen["x"][pos : pos + 1]
        g = []
        for _ in range(DIRECTIONS):
            d = rng.standard_normal(x.shape)
            d *= 1e-4 * np.linalg.norm(x) / np.linalg.norm(d)
            g.append(np.linalg.norm(mlp(x + d) - mlp(x)) / np.linalg.norm(d))
        gains.append("%d: %.1f" % (pos, np.median(g)))
    print("layer %d MLP gain (median of %d directions) at positions %s" % (GAIN_LAYER, DIRECTIONS, ", ".join(gains)))


if __name__ == "__main__":
    main()
