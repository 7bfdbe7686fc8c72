#!/usr/bin/env python3
"""Independent reference for runmesh/gemma-3-270m: a float64 numpy Gemma 3 forward over the GGUF.

Shares no code with the node (no candle, no ggml): weights come from the `gguf` package's reader and
`gguf.quants.dequantize`, and the forward follows Hugging Face's Gemma 3 (GELU-tanh MLP gate, q/k RMS
norms per head, rope base 10 000 on local layers and 1 000 000 on every 6th (global) layer, a 512-token
sliding window on local layers, embeddings scaled by sqrt(hidden), logits from the tied embedding).
The GGUF's norm weights already hold Gemma's `1 + w`. The tokenizer is the llama.cpp-style SPM-BPE
over the GGUF vocabulary.

usage: gemma_reference.py MODEL.gguf < cases.json > reference.json
  cases.json: [{"prompt": "...", "new_tokens": N}, ...]
  reference.json: [{"prompt", "ids": [...], "top5": [[id, logit], ...], "greedy": [ids...]}, ...]:
  the prompt's ids, the top-5 logits at its last position, then N greedy tokens.
"""

import json
import math
import sys

import numpy as np
from gguf import GGUFReader
from gguf.quants import dequantize

EPS = 1e-6
WINDOW = 512
GLOBAL_EVERY = 6


def field(r, key):
    return r.fields[key].contents()


class Model:
    def __init__(self, path):
        r = GGUFReader(path)
        self.w = {}
        for t in r.tensors:
            self.w[t.name] = dequantize(t.data, t.tensor_type).astype(np.float64)
        self.layers = int(field(r, "gemma3.block_count"))
        self.heads = int(field(r, "gemma3.attention.head_count"))
        self.kv_heads = int(field(r, "gemma3.attention.head_count_kv"))
        self.head_dim = int(field(r, "gemma3.attention.key_length"))
        self.hidden = int(field(r, "gemma3.embedding_length"))
        self.tokens = field(r, "tokenizer.ggml.tokens")
        self.scores = field(r, "tokenizer.ggml.scores")
        self.vocab = {t: i for i, t in enumerate(self.tokens)}
        self.bos = int(field(r, "tokenizer.ggml.bos_token_id"))

    # --- SPM-BPE: start from characters, merge the best-scoring adjacent pair in the vocab ---
    def encode(self, text):
        syms = list(text.replace(" ", "\u2581"))
        while True:
            best, at = None, -1
            for i in range(len(syms) - 1):
                j = self.vocab.get(syms[i] + syms[i + 1])
                if j is not None and (best is None or self.scores[j] > best):
                    best, at = self.scores[j], i
            if at < 0:
                break
            syms[at : at + 2] = [syms[at] + syms[at + 1]]
        ids = [self.bos]
        for s in syms:
            if s in self.vocab:
                ids.append(self.vocab[s])
            else:
                ids.extend(self.vocab["<0x%02X>" % b] for b in s.encode("utf-8"))
        return ids

    def rms(self, x, w):
        return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + EPS) * w

    def rope(self, x, base):
        # x: (heads, T, d); NeoX / HF rotate_half layout.
        d = x.shape[-1]
        inv = base ** (-np.arange(0, d, 2, dtype=np.float64) / d)
        ang = np.arange(x.shape[1], dtype=np.float64)[:, None] * inv[None, :]
        cos = np.concatenate([np.cos(ang)] * 2, axis=-1)
        sin = np.concatenate([np.sin(ang)] * 2, axis=-1)
        rot = np.concatenate([-x[..., d // 2 :], x[..., : d // 2]], axis=-1)
        return x * cos + rot * sin

    def logits(self, ids):
        w, T, hd = self.w, len(ids), self.head_dim
        x = w["token_embd.weight"][ids] * math.sqrt(self.hidden)
        pos = np.arange(T)
        causal = pos[None, :] <= pos[:, None]
        local = causal & (pos[:, None] - pos[None, :] < WINDOW)
        for l in range(self.layers):
            p = "blk.%d." % l
            is_global = (l + 1) % GLOBAL_EVERY == 0
            h = self.rms(x, w[p + "attn_norm.weight"])
            q = (h @ w[p + "attn_q.weight"].T).reshape(T, self.heads, hd).transpose(1, 0, 2)
            k = (h @ w[p + "attn_k.weight"].T).reshape(T, self.kv_heads, hd).transpose(1, 0, 2)
            v = (h @ w[p + "attn_v.weight"].T).reshape(T, self.kv_heads, hd).transpose(1, 0, 2)
            q = self.rms(q, w[p + "attn_q_norm.weight"])
            k = self.rms(k, w[p + "attn_k_norm.weight"])
            base = 1e6 if is_global else 1e4
            q, k = self.rope(q, base), self.rope(k, base)
            rep = self.heads // self.kv_heads
            k, v = np.repeat(k, rep, axis=0), np.repeat(v, rep, axis=0)
            s = q @ k.transpose(0, 2, 1) / math.sqrt(hd)
            s = np.where(causal if is_global else local, s, -np.inf)
            s = np.exp(s - s.max(-1, keepdims=True))
            a = (s / s.sum(-1, keepdims=True)) @ v
            a = a.transpose(1, 0, 2).reshape(T, self.heads * hd) @ w[p + "attn_output.weight"].T
            x = x + self.rms(a, w[p + "post_attention_norm.weight"])
            h = self.rms(x, w[p + "ffn_norm.weight"])
            g = h @ w[p + "ffn_gate.weight"].T
            g = 0.5 * g * (1 + np.tanh(math.sqrt(2 / math.pi) * (g + 0.044715 * g**3)))
            m = (g * (h @ w[p + "ffn_up.weight"].T)) @ w[p + "ffn_down.weight"].T
            x = x + self.rms(m, w[p + "post_ffw_norm.weight"])
        x = self.rms(x[-1], w["output_norm.weight"])
        return w["token_embd.weight"] @ x


def run(m, prompt, new):
    ids = m.encode(prompt)
    out = {"prompt": prompt, "ids": ids}
    seq = list(ids)
    greedy = []
    for i in range(new + 1):
        lg = m.logits(seq)
        if i == 0:
            top = np.argsort(-lg)[:5]
            out["top5"] = [[int(t), float(lg[t])] for t in top]
        if i == new:
            break
        t = int(np.argmax(lg))
        greedy.append(t)
        seq.append(t)
    out["greedy"] = greedy
    return out


def main():
    m = Model(sys.argv[1])
    cases = json.load(sys.stdin)
    json.dump([run(m, c["prompt"], int(c.get("new_tokens", 16))) for c in cases], sys.stdout, indent=1)
    print()


if __name__ == "__main__":
    main()
