"""The fuzzer of issue 28 (``make fuzz``): seeded corruptions of every input hespot reads,
each run through the command that reads it and judged by the fault suite's rule."""
