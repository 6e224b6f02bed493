"""Benchmarks of stage 1 and of fine-tuning (``hespot bench-*``, ``make bench-*``; not
tests). Each prints what it measured and, last, one machine-readable summary line.

- :mod:`~embed.bench.common`: what they share: threads, fresh processes, the backbone's
  limit on random input, the parser's common flags;
- :mod:`~embed.bench.embed`: stage 1's pipeline vs the model's limit vs a naive loop
  (``hespot bench-embed``);
- :mod:`~embed.bench.read`: stage 1's reader alone beside the model (``hespot bench-read``);
- :mod:`~embed.bench.scale`: in-process vs Dask workers (``hespot bench-scale``);
- :mod:`~embed.bench.finetune`: the fine-tuning step, fp32 vs bf16, and the augmentation
  pipeline (``hespot bench-finetune``).

Importing the package does no work and imports none of them.
"""
