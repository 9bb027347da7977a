"""The admin view's backend: counts, failed images, retries and paced bulk re-runs (schema.py),
the bulk jobs themselves (jobs.py) and the task of each API process that feeds them (feeder.py)."""
