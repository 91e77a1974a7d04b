//! The Slurm commands as a [`SlurmApi`](crate::SlurmApi): for users on a login node.
//! (Being written: see docs/slurm.md.)
