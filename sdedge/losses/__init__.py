"""Loss terms and training methods (registered, weighted components)."""
