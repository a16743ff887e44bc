"""Built-in methods; registered lazily in benchbox.registry."""
