//! Where events go: JSON lines to stdout or a file.
