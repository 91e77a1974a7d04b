//! Shared helpers of the AWS backend tests: the moto server harness and a fault-injecting
//! proxy to put in front of it.
#![allow(dead_code)]

pub mod fault_proxy;
mod moto;

pub use moto::*;
