"""``python -m embed.finetune``: the fine-tuning command (:func:`embed.finetune.run.main`)."""

if __name__ == "__main__":
    from embed.finetune.run import main

    raise SystemExit(main())
