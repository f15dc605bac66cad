"""The trainer: loops, schedules, resume, DDP, evaluation."""
