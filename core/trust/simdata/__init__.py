"""Package data for the built-in TEE simulator (simulator.py): a canned genuine TDX v4 quote."""
