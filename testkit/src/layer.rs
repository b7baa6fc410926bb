//! Tar layers built from a list of changes.
