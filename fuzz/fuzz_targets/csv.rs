//! CSV input: the header (`read_header`), the partitioner's cut (`partition_csv`) and the
//! worker's decoding of each batch (`csv_items`). The scanner that finds record ends and the
//! `csv` crate that decodes them must agree: a worker finds in each batch as many records as
//! the plan says, whatever the quotes and line endings.
#![no_main]

use libfuzzer_sys::fuzz_target;
use orch_core::csv_input::{CsvOptions, csv_items, partition_csv, read_header};
use orch_core::partition::PartitionOptions;

fuzz_target!(|data: &[u8]| {
    let [flags, size, max_bytes, input @ ..] = data else {
        return;
    };
    // The dialects users pick, and now and then any byte pair (which must be refused or work).
    let (delimiter, quote) = match flags % 8 {
        0 | 1 | 2 => (b',', b'"'),
        3 => (b';', b'"'),
        4 => (b'\t', b'\''),
        5 => (b'|', b'"'),
        _ => (size.wrapping_mul(7), max_bytes.wrapping_mul(13)),
    };
    let csv = CsvOptions {
        delimiter,
        quote,
        has_header: flags & 0x80 == 0,
    };
    let opts = PartitionOptions {
        batch_size: u64::from(*size % 8) + 1,
        max_bytes: u64::from(*max_bytes) + 1,
        hard_limit: 1 << 20,
        max_batches: None,
    };
    let Ok((header, data_start)) = read_header(input, &csv) else {
        return;
    };
    assert!(data_start <= input.len() as u64);
    let Ok(plan) = partition_csv(input, "fuzz.csv", data_start, opts, &csv) else {
        return;
    };
    let mut next_byte = data_start;
    let mut next_item = 0;
    for batch in &plan.batches {
        assert!(
            batch.start >= next_byte && batch.start <= batch.end,
            "{batch:?}"
        );
        assert_eq!(batch.first_item, next_item, "{batch:?}");
        let range = &input[batch.start as usize..batch.end as usize];
        let mut items = 0;
        for record in csv_items(range, &header, &csv) {
            if let Ok(record) = record {
                let _ = orch_worker::run::to_raw(&record);
            }
            items += 1;
        }
        assert_eq!(
            items, batch.items,
            "a worker reads another count: {batch:?}"
        );
        next_byte = batch.end;
        next_item += batch.items;
    }
    assert_eq!(next_item, plan.items);
});
