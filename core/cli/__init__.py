"""The command line: commands, the API client and the verifier."""
