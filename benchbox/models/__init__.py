"""Built-in models; registered lazily in benchbox.registry."""
