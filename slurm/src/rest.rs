//! slurmrestd as a [`SlurmApi`](crate::SlurmApi): for an operator outside the cluster.
//! (Being written: see docs/slurm.md.)
