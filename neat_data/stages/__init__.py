"""Pipeline stages: each a function from one table (a run-folder input) to the next, with no Click import."""
