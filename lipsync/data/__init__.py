"""Training data formats: the shard sample (clip_sample) and training-window sampling (windows)."""
