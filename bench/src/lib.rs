//! Strait's benchmark harness.
//!
//! In: the real binaries and a baseline (a direct connection, nginx) started in the same run.
//! Out: figures printed as ratios against that baseline; benchmarks are run on demand, never as
//! tests. Each benchmark arrives with the issue whose target it measures.
#![forbid(unsafe_code)]
