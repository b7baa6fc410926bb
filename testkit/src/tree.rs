//! Trees described declaratively, applied to a directory, read back and compared.
