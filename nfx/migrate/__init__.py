"""Moving flows and their state between NF instances."""
