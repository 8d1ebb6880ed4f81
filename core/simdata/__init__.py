"""Package data for the built-in TEE simulator (tee_simulator.py): a canned genuine TDX v4 quote."""
