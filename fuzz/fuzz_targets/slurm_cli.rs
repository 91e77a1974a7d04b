//! The Slurm commands' output as the `cli` transport parses it: `sbatch --parsable`, `squeue`
//! and `sacct` records (merged into arrays), `scontrol show config` and `show partition`, and
//! time limits. Output from any Slurm version, or a broken one, must parse or be refused.
#![no_main]

use libfuzzer_sys::fuzz_target;
use orch_slurm::cli::{parse_outputs, parse_slurm_time};

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    // NUL separates the outputs of the five commands (Slurm never prints one).
    let mut parts = text.split('\0');
    let mut next = || parts.next().unwrap_or_default();
    let (sbatch, squeue, sacct, config, partitions) = (next(), next(), next(), next(), next());
    // The name of the arrays looked for: the one most records carry in the seeds.
    let _ = parse_outputs("orch-job", sbatch, squeue, sacct, config, partitions);
    let _ = parse_slurm_time(&text);
});
