"""The fine-tuned CNN path: a registry (timm) backbone fine-tuned per LOSO fold to predict
cell-type abundance per spot, written in stage 2's result format
(``OUT/predictions/<model_id>/{oof,test}.csv`` and an entry of ``OUT/report.json``), so
reports, ensembles and submit treat it like any other model.

The winning recipe, each part a setting: patches centred on spots; a timm backbone with a
Linear -> Sigmoid head; targets rank-scaled per spot to [0, 1]; L1 loss (or a soft-rank
differentiable Spearman, ``--loss soft_rank`` / ``l1+soft_rank``); AdamW with
per-step cosine annealing; the albumentations training pipeline and CutMix; leave one
slide out, the best epoch picked by held-out per-spot Spearman; a checkpoint per fold and
epoch, and exact resume (every epoch's randomness from (seed, fold, epoch)); dihedral TTA
at prediction time.

Modules, each importing only those above it:

- :mod:`~embed.finetune.augment`: the albumentations pipelines and CutMix;
- :mod:`~embed.finetune.losses`: L1, MSE and the soft-rank (differentiable Spearman) losses;
- :mod:`~embed.finetune.model`: the model (encoder + head), TTA prediction;
- :mod:`~embed.finetune.config`: :class:`FinetuneConfig`, the presets and their checks;
- :mod:`~embed.finetune.data`: patches cropped once per slide, datasets and loaders;
- :mod:`~embed.finetune.checkpoints`: checkpoints on disk and the settings check;
- :mod:`~embed.finetune.loop`: one fold's training loop, checkpoints and resume;
- :mod:`~embed.finetune.fold`: one LOSO fold end to end (train, predict, cache);
- :mod:`~embed.finetune.run`: the run over the folds, the report entry, the command
  (``python -m embed.finetune``, ``hespot finetune``).

Its benchmark (training throughput, fp32 vs bf16) is :mod:`embed.bench.finetune`
(``hespot bench-finetune``).

Importing the package does no work and imports none of them.
"""
