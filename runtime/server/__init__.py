"""HTTP serving of an AnytimeSession (KServe v2 / Open Inference Protocol)."""
