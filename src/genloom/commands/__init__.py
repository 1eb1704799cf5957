"""Per-family implementations of `genloom sample` and `genloom eval` (the CLI dispatches by the file's kind)."""
