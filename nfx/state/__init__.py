"""NF state as a first-class object: tables by scope, filters, chunks on one wire format."""
