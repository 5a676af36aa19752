"""The project's own tiny DeepSeek-V3-architecture checkpoint: corpus, tokenizer and training.

Importing this package must not import torch (the tokenizer builder is used by torch-free tests);
only `inference.demo.train` needs it.
"""
