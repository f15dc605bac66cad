"""sdedge.calibrate: temperatures, thresholds, latency profiles and anytime curves (torch-free)."""
