//! `output.jsonl`: one JSON object per result row.

use std::io::{self, Write};
use std::path::{Path, PathBuf};

use super::{Cell, Cells, for_each_batch, output_columns, push_number};
use crate::Result;
use crate::atomic::AtomicFile;
use crate::checksum::FileInfo;
use crate::error::DataError;

pub(super) fn write(parts: &[PathBuf], path: &Path) -> Result<FileInfo> {
    let columns = output_columns(parts)?;
    // Every line repeats the same keys: encode each `"name":` once.
    let keys = columns
        .iter()
        .map(|c| {
            let mut key = serde_json::to_vec(&c.name)?;
            key.push(b':');
            Ok(key)
        })
        .collect::<serde_json::Result<Vec<_>>>()
        .map_err(|source| DataError::Json {
            path: path.to_path_buf(),
            source,
        })?;
    let (file, mut sink) = AtomicFile::create(path)?;
    let mut line = Vec::new();
    let rows = for_each_batch(parts, &columns, |cells, rows| {
        for row in 0..rows {
            line.clear();
            // One write per line: the sink hashes what it is given, and few large slices
            // hash faster than many small ones.
            encode_line(&mut line, &keys, cells, row)
                .and_then(|()| sink.write_all(&line))
                .map_err(|e| DataError::io("write", path, e))?;
        }
        Ok(())
    })?;
    let (bytes, sha256) = file.commit(sink)?;
    Ok(FileInfo {
        rows,
        bytes,
        sha256,
    })
}

fn encode_line(
    out: &mut Vec<u8>,
    keys: &[Vec<u8>],
    cells: &[Cells<'_>],
    row: usize,
) -> io::Result<()> {
    out.push(b'{');
    for (i, (key, column)) in keys.iter().zip(cells).enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(key);
        encode_value(out, column.get(row))?;
    }
    out.extend_from_slice(b"}\n");
    Ok(())
}

fn encode_value(out: &mut Vec<u8>, cell: Cell<'_>) -> io::Result<()> {
    match cell {
        Cell::Bool(b) => out.extend_from_slice(if b { b"true" } else { b"false" }),
        // JSON text of nested values stays a string: re-parsing it would make a column's
        // type depend on the row (see the module docs).
        Cell::Text(s) => serde_json::to_writer(&mut *out, s)?,
        Cell::Null | Cell::UInt(_) | Cell::Int(_) | Cell::Float(_) => {
            // Null, and the non-finite floats JSON has no number for, are `null`.
            if !push_number(out, cell)? {
                out.extend_from_slice(b"null");
            }
        }
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn value(cell: Cell<'_>) -> String {
        let mut out = Vec::new();
        encode_value(&mut out, cell).unwrap();
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn values() {
        assert_eq!(value(Cell::Null), "null");
        assert_eq!(value(Cell::Float(f64::INFINITY)), "null");
        assert_eq!(value(Cell::Float(f64::NAN)), "null");
        assert_eq!(value(Cell::Bool(false)), "false");
        assert_eq!(value(Cell::Int(-3)), "-3");
        assert_eq!(value(Cell::Text("{\"a\":1}")), r#""{\"a\":1}""#);
        assert_eq!(value(Cell::Text("tab\t\u{0}é")), r#""tab\t\u0000é""#);
    }
}
