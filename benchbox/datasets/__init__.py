"""Built-in datasets; registered lazily in benchbox.registry."""
