"""landsurf processing: derived products, job queue and workers, and the `landsurf` CLI."""
