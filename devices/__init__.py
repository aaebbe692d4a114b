"""Built-in device descriptors (``*.toml``) and measured profiles (``profiles/*.jsonl``):
data shipped with hwprune and read through :func:`hwprune.devices.builtin_dir`."""
