//! JSONL input: the partitioner's cut (`partition_jsonl`) and the worker's reading of each
//! batch (`jsonl_items`, then each line decoded as the handler's item). The batches must cover
//! the input exactly, and a worker must find in each batch as many items as the plan says.
#![no_main]

use libfuzzer_sys::fuzz_target;
use orch_core::partition::{PartitionOptions, jsonl_items, partition_jsonl};

fuzz_target!(|data: &[u8]| {
    // The first bytes choose the cut; small limits so that short inputs make several batches.
    let [size, max_bytes, hard, input @ ..] = data else {
        return;
    };
    let opts = PartitionOptions {
        batch_size: u64::from(*size % 8) + 1,
        max_bytes: u64::from(*max_bytes) + 1,
        hard_limit: u64::from(*hard) * 4 + 1,
        max_batches: None,
    };
    let Ok(plan) = partition_jsonl(input, "fuzz.jsonl", opts) else {
        return;
    };
    assert_eq!(plan.bytes, input.len() as u64);
    let mut next_byte = 0;
    let mut next_item = 0;
    for batch in &plan.batches {
        assert!(
            batch.start >= next_byte && batch.start <= batch.end,
            "{batch:?}"
        );
        // Only blank lines may lie between batches.
        let gap = &input[next_byte as usize..batch.start as usize];
        assert_eq!(
            jsonl_items(gap).count(),
            0,
            "items between batches: {batch:?}"
        );
        assert_eq!(batch.first_item, next_item, "{batch:?}");
        let range = &input[batch.start as usize..batch.end as usize];
        let mut items = 0;
        for line in jsonl_items(range) {
            // Ok or a message for this item alone; never a panic.
            let _ = orch_worker::run::parse_item(line);
            items += 1;
        }
        assert_eq!(
            items, batch.items,
            "a worker reads another count: {batch:?}"
        );
        next_byte = batch.end;
        next_item += batch.items;
    }
    let tail = &input[next_byte as usize..];
    assert_eq!(jsonl_items(tail).count(), 0, "items after the last batch");
    assert_eq!(next_item, plan.items);
    assert_eq!(plan.items, jsonl_items(input).count() as u64);
});
