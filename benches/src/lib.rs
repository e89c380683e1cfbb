//! Cross-stage and end-to-end criterion benches of Strata; the benches are in `benches/`.
//!
//! Run: `cargo bench -p strata-benches`. Nothing here is published or depended on: comparison
//! dependencies (other stores) belong in this crate only, so no stage crate ever pulls them in.
