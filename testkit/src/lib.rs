//! `orch-testkit`: what the tests of several crates share. A dev-dependency only: no production
//! crate links it (the crate-edge test checks).
//!
//! - [`contract`]: the behaviour every backend must show, as reusable test functions, run
//!   against the embedded backends and against AWS on moto;
//! - [`no_history`]: a state store whose attempt history always fails (it must never fail a
//!   task);
//! - [`moto`]: one real moto server per test binary, and SDK configuration pointing at it;
//! - [`fault_proxy`]: a TCP proxy that injects faults between the SDK and moto;
//! - [`serial_proxy`]: a proxy that hands moto one request at a time (its conditional writes
//!   are not atomic under concurrency);
//! - [`limited_api`]: an HTTP API that enforces a token bucket and counts what it admits (the
//!   `http` handler and rate limiting are tested against it; also the `limited-api` binary);
//! - [`kube_emulator`]: starts the Kubernetes API emulator of `tests/kube-emulator`;
//! - [`components`]: how a test that needs Slurm, kubectl, moto or pyarrow finds it, and
//!   what happens when it is missing (skipped visibly; a failure under `CI`).
//!
//! See docs/testing.md.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

pub mod components;
pub mod contract;
pub mod fault_proxy;
pub mod kube_emulator;
pub mod limited_api;
pub mod moto;
pub mod no_history;
pub mod serial_proxy;
