//! containerd filter language (filled in by a helper).
