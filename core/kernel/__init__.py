"""The kernel: the hook specifications, the contract types they pass, the plugin registry and the errors every part answers with."""
