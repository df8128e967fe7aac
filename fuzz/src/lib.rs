//! Checks shared by the fuzz targets and tests/fuzz_regressions.rs.
pub mod checks;
