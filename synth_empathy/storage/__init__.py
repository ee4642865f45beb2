"""Where data lives: the run folder (stage tables, markers, resume) and the manifest."""
