"""vitskip environments."""
