//! `output.csv`: a header, then one RFC 4180 record per result row.
//!
//! Written by hand rather than with the `csv` crate: the format is a few lines of quoting,
//! and we need one thing a general writer does not offer, `""` for an empty string next to
//! an empty field for null.

use std::io::Write;
use std::path::{Path, PathBuf};

use super::{Cell, Cells, for_each_batch, output_columns, push_number};
use crate::Result;
use crate::atomic::AtomicFile;
use crate::checksum::FileInfo;
use crate::error::DataError;

/// RFC 4180 ends records with CRLF; readers that expect LF accept it too.
const RECORD_END: &[u8] = b"\r\n";

pub(super) fn write(parts: &[PathBuf], path: &Path) -> Result<FileInfo> {
    let columns = output_columns(parts)?;
    let (file, mut sink) = AtomicFile::create(path)?;
    let mut line = Vec::new();
    for (i, column) in columns.iter().enumerate() {
        if i > 0 {
            line.push(b',');
        }
        push_text(&mut line, &column.name);
    }
    line.extend_from_slice(RECORD_END);
    sink.write_all(&line)
        .map_err(|e| DataError::io("write", path, e))?;
    let rows = for_each_batch(parts, &columns, |cells, rows| {
        for row in 0..rows {
            line.clear();
            encode_record(&mut line, cells, row).map_err(|e| DataError::io("write", path, e))?;
            // One write per record: the sink hashes what it is given, and few large slices
            // hash faster than many small ones.
            sink.write_all(&line)
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

fn encode_record(out: &mut Vec<u8>, cells: &[Cells<'_>], row: usize) -> std::io::Result<()> {
    for (i, column) in cells.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        match column.get(row) {
            Cell::Bool(b) => out.extend_from_slice(if b { b"true" } else { b"false" }),
            Cell::Text(s) => push_text(out, s),
            // Null, and non-finite floats (which JSON input cannot produce), stay empty.
            cell @ (Cell::Null | Cell::UInt(_) | Cell::Int(_) | Cell::Float(_)) => {
                push_number(out, cell)?;
            }
        }
    }
    out.extend_from_slice(RECORD_END);
    Ok(())
}

/// Appends a text field, quoted when RFC 4180 requires it, and also when empty so that an
/// empty string differs from a null.
fn push_text(out: &mut Vec<u8>, text: &str) {
    let quote = text.is_empty()
        || text
            .bytes()
            .any(|b| matches!(b, b',' | b'"' | b'\r' | b'\n'));
    if !quote {
        out.extend_from_slice(text.as_bytes());
        return;
    }
    out.push(b'"');
    for b in text.bytes() {
        if b == b'"' {
            out.push(b'"');
        }
        out.push(b);
    }
    out.push(b'"');
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn text(s: &str) -> String {
        let mut out = Vec::new();
        push_text(&mut out, s);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn quoting() {
        assert_eq!(text("plain text"), "plain text");
        assert_eq!(text(""), r#""""#);
        assert_eq!(text("a,b"), r#""a,b""#);
        assert_eq!(text(r#"say "hi""#), r#""say ""hi""""#);
        assert_eq!(text("two\nlines"), "\"two\nlines\"");
        assert_eq!(text("cr\r"), "\"cr\r\"");
        assert_eq!(text("日本"), "日本");
    }
}
