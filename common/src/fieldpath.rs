//! Update field paths (filled in by a helper).
