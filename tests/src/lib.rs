//! Integration and end-to-end test harness.
