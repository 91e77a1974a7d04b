//! Tests of the Kubernetes executor.
