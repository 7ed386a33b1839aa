"""char_lstm.py's ``sample`` and ``eval`` modes: read a training run's checkpoint (``--checkpoint RUN_DIR``,
``--which best|last|STEP``) with its vocabulary, then generate text or score the validation and test splits of
the dataset it was trained on (``--eval-splits``), on the layer path training recorded.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from lstm_jax.train.checkpoint import load_checkpoint
from lstm_jax.data.text import Vocab, load_text
from lstm_jax.models import char_model as cm

from experiments.common import epilogue

__all__ = ["load_run", "sample_mode", "eval_mode"]


def load_run(args, mode: str):
    """``(params, spec, metadata, vocab)`` of checkpoint ``--which`` in ``--checkpoint``, for the sample/eval modes:
    the model is what the checkpoint's spec says (its cell, sizes and the layer path training used)."""
    if not args.checkpoint:
        raise SystemExit(f"error: {mode} mode needs --checkpoint RUN_DIR (the --out of a training run)")
    params, meta = load_checkpoint(args.checkpoint, args.which)
    if "vocab" not in meta:
        raise SystemExit(f"error: {args.checkpoint} has no vocabulary in its metadata; was it written by char_lstm.py?")
    why = {"best": "lowest validation loss", "last": "latest step"}.get(args.which, "requested with --which")
    print(f"{mode}: checkpoint step {meta['step']} of {args.checkpoint} (--which {args.which}: {why}; "
          "--which best|last|STEP)", file=sys.stderr)
    return params, cm.spec_from_config(meta.get("model")), meta, Vocab.from_json(meta["vocab"])


def sample_mode(args) -> str:
    """Print and return ``--length`` characters sampled after ``--prompt`` (default a newline)."""
    params, spec, meta, vocab = load_run(args, "sample")
    text = cm.sample(params, spec, vocab, "\n" if args.prompt is None else args.prompt, args.length,
                     temperature=args.temperature, top_k=args.top_k, seed=args.seed)
    print(text)
    return text


def eval_mode(args) -> dict:
    """Evaluate a saved checkpoint on the ``--eval-splits`` of its dataset (default validation and test)."""
    params, spec, meta, vocab = load_run(args, "eval")
    saved = meta.get("args", {})
    dataset = "file" if saved.get("text_file") else saved.get("dataset", args.dataset)
    splits = load_text(dataset, text_file=saved.get("text_file"), data_dir=args.data_dir or saved.get("data_dir"))
    if splits.vocab != vocab:
        raise SystemExit(f"error: the vocabulary of {splits.name} differs from the checkpoint's")
    seq_len = args.eval_seq_len or saved.get("seq_len", args.seq_len)
    out = {"command": " ".join([Path(sys.argv[0]).name] + sys.argv[1:]), "config": epilogue.resolved_args(args),
           "checkpoint": str(args.checkpoint), "which": args.which, "step": meta["step"], "eval_seq_len": seq_len}
    how = {"window": f"windows of {seq_len} chars from a zero state",
           "stream": f"the split as one stream, state carried across windows of {seq_len}"}
    for split, ids in cm.eval_splits(splits, args.eval_splits).items():
        out[split] = r = cm.eval_contexts(params, ids, spec, args.eval_batch_size, seq_len, args.eval_context)
        for c in args.eval_context:
            p = cm.context_prefix(c)
            print(f"{split}: {r[p + 'nats_per_char']:.4f} nats/char = {r[p + 'bits_per_char']:.4f} bits/char "
                  f"(step {meta['step']}, {how[c]})")
    if args.save:
        Path(args.save).write_text(json.dumps(out, indent=2))
    return out
