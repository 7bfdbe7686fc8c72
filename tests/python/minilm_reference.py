#!/usr/bin/env python3
"""Independent reference for runmesh/all-minilm-l6-v2: a numpy BERT over the same model.safetensors.

Shares no code with the node (no candle, no `tokenizers`): its own safetensors reader, its own
BERT-uncased WordPiece tokenizer (lowercase, accents stripped, split on whitespace and punctuation,
greedy longest-match subwords, vocab read from tokenizer.json), and the sentence-transformers pipeline
(BERT → mean over tokens → L2 normalise). Texts are embedded one at a time, so there is no padding.

usage: minilm_reference.py MODEL_DIR < texts.json > embeddings.json
  texts.json: ["text", ...]; embeddings.json: [[384 floats], ...]
"""

import json
import math
import struct
import sys
import unicodedata

import numpy as np

MAX_TOKENS = 256  # sentence-transformers' max_seq_length for this model


def load_safetensors(path):
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(n))
        data = f.read()
    out = {}
    for name, meta in header.items():
        if name == "__metadata__" or meta["dtype"] != "F32":
            continue  # e.g. embeddings.position_ids (I64), not a weight
        a, b = meta["data_offsets"]
        out[name] = np.frombuffer(data[a:b], dtype="<f4").reshape(meta["shape"]).astype(np.float64)
    return out


def is_punct(ch):
    cp = ord(ch)
    if 33 <= cp <= 47 or 58 <= cp <= 64 or 91 <= cp <= 96 or 123 <= cp <= 126:
        return True
    return unicodedata.category(ch).startswith("P")


def basic_tokens(text):
    text = unicodedata.normalize("NFD", text.lower())
    text = "".join(c for c in text if unicodedata.category(c) != "Mn")
    words, cur = [], ""
    for ch in text:
        if ch.isspace():
            if cur:
                words.append(cur)
            cur = ""
        elif is_punct(ch):
            if cur:
                words.append(cur)
            words.append(ch)
            cur = ""
        else:
            cur += ch
    if cur:
        words.append(cur)
    return words


def wordpiece(word, vocab):
    if len(word) > 100:
        return [vocab["[UNK]"]]
    ids, start = [], 0
    while start < len(word):
        end = len(word)
        while end > start:
            piece = word[start:end] if start == 0 else "##" + word[start:end]
            if piece in vocab:
                ids.append(vocab[piece])
                break
            end -= 1
        else:
            return [vocab["[UNK]"]]
        start = end
    return ids


def tokenize(text, vocab):
    ids = [i for w in basic_tokens(text) for i in wordpiece(w, vocab)]
    return [vocab["[CLS]"]] + ids[: MAX_TOKENS - 2] + [vocab["[SEP]"]]


def layer_norm(x, w, b, eps=1e-12):
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + eps) * w + b


_erf = np.vectorize(math.erf)


def gelu(x):
    return 0.5 * x * (1.0 + _erf(x / math.sqrt(2.0)))


def embed(ids, W, heads=12, layers=6):
    lin = lambda x, p: x @ W[p + ".weight"].T + W[p + ".bias"]
    n = len(ids)
    x = W["embeddings.word_embeddings.weight"][ids]
    x = x + W["embeddings.position_embeddings.weight"][:n] + W["embeddings.token_type_embeddings.weight"][0]
    x = layer_norm(x, W["embeddings.LayerNorm.weight"], W["embeddings.LayerNorm.bias"])
    d = x.shape[1] // heads
    for i in range(layers):
        p = f"encoder.layer.{i}."
        q, k, v = (lin(x, p + "attention.self." + t).reshape(n, heads, d).transpose(1, 0, 2) for t in ("query", "key", "value"))
        s = q @ k.transpose(0, 2, 1) / math.sqrt(d)
        s = np.exp(s - s.max(-1, keepdims=True))
        s = s / s.sum(-1, keepdims=True)
        ctx = (s @ v).transpose(1, 0, 2).reshape(n, heads * d)
        x = layer_norm(x + lin(ctx, p + "attention.output.dense"), W[p + "attention.output.LayerNorm.weight"], W[p + "attention.output.LayerNorm.bias"])
        h = gelu(lin(x, p + "intermediate.dense"))
        x = layer_norm(x + lin(h, p + "output.dense"), W[p + "output.LayerNorm.weight"], W[p + "output.LayerNorm.bias"])
    m = x.mean(0)
    return m / max(np.linalg.norm(m), 1e-12)


def main():
    model_dir = sys.argv[1]
    W = load_safetensors(model_dir + "/model.safetensors")
    vocab = json.load(open(model_dir + "/tokenizer.json", encoding="utf-8"))["model"]["vocab"]
    texts = json.load(sys.stdin)
    out = [[float(v) for v in embed(tokenize(t, vocab), W)] for t in texts]
    json.dump(out, sys.stdout)


if __name__ == "__main__":
    main()
