"""Processors: the code that does a task's work, looked up by the task's `kind`."""
