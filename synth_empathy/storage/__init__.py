"""Where data lives: the run folder (stage tables, markers, resume), seed readers, the
manifest."""
