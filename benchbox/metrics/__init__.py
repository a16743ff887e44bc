"""Built-in metrics; registered lazily in benchbox.registry."""
