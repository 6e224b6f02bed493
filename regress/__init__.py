"""Stage 2: targets, regressors, leave-one-slide-out CV and metrics, reports, submission.

Never imports torch: the Zarr store is the only input from stage 1."""
