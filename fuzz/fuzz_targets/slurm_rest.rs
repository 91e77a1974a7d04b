//! slurmrestd's answers as the `rest` transport decodes them: any status and body, read as
//! each kind of answer (jobs → arrays, partitions, submit, cancel, update, the API
//! description, ping), must give an answer or a typed error, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use orch_slurm::rest::decode_answers;

fuzz_target!(|data: &[u8]| {
    let [status, body @ ..] = data else {
        return;
    };
    // Mostly 200, sometimes the statuses the decoder treats apart.
    let status = match status % 8 {
        0 => 400,
        1 => 401,
        2 => 500,
        3 => 503,
        4 => 304,
        _ => 200,
    };
    let _ = decode_answers("orch-job", status, body);
});
