"""Training: one loop (loop.py) that runs every family as a task (tasks/)."""
