//! CSV input end to end through real files, the way the driver (header, plan) and a worker
//! (seek to its range, decode) use it: the file is larger than the partitioner's 8 MiB read
//! buffer, so a cut between reads falls inside some quoted multi-line record.
#![allow(clippy::unwrap_used)]

use std::io::{Read, Seek, SeekFrom, Write};

use orch_core::csv_input::{CsvOptions, csv_items, partition_csv, read_header};
use orch_core::partition::{DEFAULT_HARD_LIMIT, PartitionOptions};

#[test]
fn a_file_over_the_read_buffer_partitions_and_decodes_every_row_once() {
    let mut file = tempfile::NamedTempFile::new().unwrap();
    let mut text = String::from("\u{feff}id,note,\"tag\"\r\n");
    let rows = 230_000u64;
    for i in 0..rows {
        text.push_str(&format!(
            "{i},\"line one\r\nline \"\"two\"\", with a comma\",t{i}\r\n"
        ));
    }
    assert!(text.len() > 8 << 20);
    file.write_all(text.as_bytes()).unwrap();
    let path = file.path();

    let csv = CsvOptions::default();
    let (header, start) = read_header(std::fs::File::open(path).unwrap(), &csv).unwrap();
    assert_eq!(header, ["id", "note", "tag"]);
    let opts = PartitionOptions {
        batch_size: 50_000,
        max_bytes: 1 << 20,
        hard_limit: DEFAULT_HARD_LIMIT,
        max_batches: None,
    };
    let plan = partition_csv(
        std::fs::File::open(path).unwrap(),
        "file",
        start,
        opts,
        &csv,
    )
    .unwrap();
    assert_eq!(plan.items, rows);
    assert_eq!(plan.bytes, text.len() as u64);
    assert!(plan.batches.len() > 8);

    let mut next = 0u64;
    for batch in &plan.batches {
        let mut f = std::fs::File::open(path).unwrap();
        f.seek(SeekFrom::Start(batch.start)).unwrap();
        let mut data = vec![0u8; batch.bytes() as usize];
        f.read_exact(&mut data).unwrap();
        let mut count = 0;
        for (k, item) in csv_items(&data, &header, &CsvOptions::default()).enumerate() {
            let item = item.unwrap();
            let ordinal = batch.first_item + k as u64;
            assert_eq!(ordinal, next);
            assert_eq!(item["id"], ordinal.to_string());
            assert_eq!(item["note"], "line one\r\nline \"two\", with a comma");
            assert_eq!(item["tag"], format!("t{ordinal}"));
            next += 1;
            count += 1;
        }
        assert_eq!(count, batch.items);
    }
    assert_eq!(next, rows);
}
