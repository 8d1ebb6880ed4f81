"""Running projects: launch plans, the sandbox, processes and supervision, limits, volumes, egress, identities, containers."""
