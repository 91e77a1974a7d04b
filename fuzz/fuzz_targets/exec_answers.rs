//! The `exec` handler protocol: what the worker makes of the lines a handler writes on its
//! stdout (`{"id": …, "result": …}` or `"error"`, `usage`, over-long lines). Anything a handler
//! writes must be taken or refused without a panic, and the answers must not depend on how
//! the pipe cut the output into reads.
#![no_main]

use libfuzzer_sys::fuzz_target;
use orch_worker::handler::read_answers;

fuzz_target!(|data: &[u8]| {
    let [chunk, limit, stdout @ ..] = data else {
        return;
    };
    let chunk = usize::from(*chunk % 32) + 1;
    // Small answer limits, so that the over-long line paths are reached with short inputs.
    let max_line = match limit % 4 {
        0 => 1 << 20,
        _ => usize::from(*limit) + 1,
    };
    let (Ok(whole), Ok(pieces)) = (
        read_answers(stdout, usize::MAX, max_line, 8),
        read_answers(stdout, chunk, max_line, 8),
    ) else {
        return;
    };
    assert_eq!(whole, pieces, "answers depend on the reads (chunk {chunk})");
});
