#!/usr/bin/env python3
"""The llama.cpp side of `runmesh models bench --model gemma-3-270m --llama-python PY`.

Loads the same GGUF with llama-cpp-python (built from PyPI source, in a venv of its own: it is not a CI
dependency) and runs rounds of: prefill of the prompt tokens, then greedy decoding of N tokens (argmax
of the logits, no sampler, never stopping early at EOS, like our side), with THREADS threads for both.
The prompt ids come from our tokenizer, so both sides run the same sequence.

usage: llama_cpp_gemma.py MODEL.gguf THREADS NEW_TOKENS ROUNDS < ids.json
  prints one JSON line per round: {"prefill_ms": ..., "decode_tokens_per_s": ..., "tokens": [...]}
"""

import json
import sys
import time

import numpy as np
from llama_cpp import Llama


def last_logits(llm):
    # llama-cpp-python 0.3.x no longer copies logits into `llm.scores` unless `logits_all=True`
    # (which would run the output head on every prompt token and inflate prefill): read the last
    # output row from the context directly.
    ptr = llm._ctx.get_logits_ith(-1)
    return np.ctypeslib.as_array(ptr, shape=(llm.n_vocab(),))


def main():
    path, threads, new, rounds = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
    ids = json.load(sys.stdin)
    llm = Llama(
        model_path=path,
        n_threads=threads,
        n_threads_batch=threads,
        n_ctx=max(512, len(ids) + new + 8),
        n_batch=512,
        verbose=False,
    )
    for _ in range(rounds):
        llm.reset()
        t0 = time.perf_counter()
        llm.eval(ids)
        tok = int(np.argmax(last_logits(llm)))
        t1 = time.perf_counter()
        out = [tok]
        for _ in range(new - 1):
            llm.eval([tok])
            tok = int(np.argmax(last_logits(llm)))
            out.append(tok)
        t2 = time.perf_counter()
        rate = (new - 1) / (t2 - t1) if new > 1 else 0.0
        print(json.dumps({"prefill_ms": (t1 - t0) * 1e3, "decode_tokens_per_s": rate, "tokens": out}))
        sys.stdout.flush()


if __name__ == "__main__":
    main()
