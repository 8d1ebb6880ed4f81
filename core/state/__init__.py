"""What the daemon knows and keeps: models, the store that owns every data-dir path, sources (tarball, git), the deploy pipeline and the attestation journal."""
