"""Levee inference: model, checkpoint loading, tokenizer, engine, worker.

Keep this file free of imports: the web tier imports `inference.tokenizer` and must not pull torch
in through the package (tests/inference/test_tokenizer.py checks it).
"""
