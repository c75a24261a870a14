//! Helpers shared by the pipeline's integration tests.

pub mod pg;
