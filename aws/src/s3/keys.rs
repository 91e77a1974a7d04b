//! The keys of an [`S3Store`]: every full key is made here, by [`S3Store::full_key`] /
//! [`S3Store::full_prefix`] (one function behind both), which refuses the keys `FsStore`
//! refuses — empty, absolute, `.`/`..`/empty segments, backslashes, control characters — so a
//! job id or a user-provided prefix can never name another job's objects, or objects outside
//! orch's prefix that IAM might still allow. Also the `s3://` URIs and bucket names, and which
//! keys are intermediate (docs/aws.md, "S3 layout").

use super::S3Store;
use crate::error::AwsError;

/// S3's longest key, in bytes.
const MAX_KEY_BYTES: usize = 1024;
/// The tag of objects that only matter while a job runs (docs/aws.md, "S3 layout").
pub const INTERMEDIATE_TAG: (&str, &str) = ("orch-intermediate", "true");
/// Subdirectories of `jobs/J/` whose objects carry [`INTERMEDIATE_TAG`].
const INTERMEDIATE_DIRS: &[&str] = &["aggregate", "checkpoints", "input"];
/// Marker inside the names of `FsStore`'s temporary files; such keys are refused here too, so
/// a key valid on one backend is valid on the other. Also used for our own download files.
pub(super) const TMP_MARKER: &str = ".tmp-";

impl S3Store {
    /// The full S3 key of an object, or `Invalid` for a key that is not a plain relative path.
    pub fn full_key(&self, key: &str) -> Result<String, AwsError> {
        self.resolve(key, Relative::Key)
    }

    /// The full S3 prefix of a listing or deletion; the relative prefix may be empty or end in
    /// a partial name.
    pub fn full_prefix(&self, prefix: &str) -> Result<String, AwsError> {
        self.resolve(prefix, Relative::Prefix)
    }

    /// The one place where full keys are made (see the module docs).
    fn resolve(&self, relative: &str, kind: Relative) -> Result<String, AwsError> {
        let what = || match kind {
            Relative::Key => format!("object key {relative:?}"),
            Relative::Prefix => format!("key prefix {relative:?}"),
        };
        check_relative(relative, kind).map_err(|why| AwsError::invalid(what(), why))?;
        let full = format!("{}{relative}", self.prefix);
        if full.len() > MAX_KEY_BYTES {
            return Err(AwsError::invalid(
                what(),
                format!("the full key is longer than S3's {MAX_KEY_BYTES} bytes"),
            ));
        }
        Ok(full)
    }

    /// The relative key of a listed full key; `None` for keys outside the prefix (which a
    /// listing under the prefix never returns).
    pub(super) fn relative<'k>(&self, full: &'k str) -> Option<&'k str> {
        full.strip_prefix(self.prefix.as_str())
    }
}

/// Whether a relative path names one object or starts a listing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Relative {
    Key,
    /// May be empty, and its last segment may be empty or partial.
    Prefix,
}

/// The rules of `FsStore`'s `check_key` / `check_prefix`, plus control characters (which S3
/// accepts but which make keys unprintable and XML listings fragile).
fn check_relative(relative: &str, kind: Relative) -> Result<(), &'static str> {
    if relative.is_empty() {
        return match kind {
            Relative::Key => Err("is empty"),
            Relative::Prefix => Ok(()),
        };
    }
    if relative.starts_with('/') {
        return Err("is absolute");
    }
    if relative.contains('\\') {
        return Err("contains a backslash");
    }
    if relative.chars().any(char::is_control) {
        return Err("contains a control character");
    }
    let segments: Vec<&str> = relative.split('/').collect();
    let last = segments.len() - 1;
    for (i, segment) in segments.iter().enumerate() {
        match *segment {
            "" if i == last && kind == Relative::Prefix => {}
            "" => return Err("has an empty path segment"),
            "." | ".." => return Err("has a `.` or `..` path segment"),
            s if s.starts_with('.') && s.contains(TMP_MARKER) => {
                return Err("has a segment named like a temporary file (`.name.tmp-…`)");
            }
            _ => {}
        }
    }
    Ok(())
}

/// Splits `s3://bucket[/prefix]` into a valid bucket name and a prefix that is empty or ends
/// with `/`.
pub fn parse_s3_uri(uri: &str) -> Result<(String, String), AwsError> {
    let what = || format!("S3 URI {uri:?}");
    let rest = uri
        .strip_prefix("s3://")
        .ok_or_else(|| AwsError::invalid(what(), "must start with s3://"))?;
    let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
    check_bucket(bucket).map_err(|why| AwsError::invalid(what(), format!("bucket name {why}")))?;
    if prefix.is_empty() {
        return Ok((bucket.to_string(), String::new()));
    }
    // `s3://b/p` and `s3://b/p/` mean the same prefix.
    let trimmed = prefix.strip_suffix('/').unwrap_or(prefix);
    check_relative(trimmed, Relative::Key)
        .map_err(|why| AwsError::invalid(what(), format!("prefix {why}")))?;
    if trimmed.len() + 1 > MAX_KEY_BYTES {
        return Err(AwsError::invalid(what(), "prefix is too long"));
    }
    Ok((bucket.to_string(), format!("{trimmed}/")))
}

/// S3's rules for general purpose bucket names.
pub(super) fn check_bucket(name: &str) -> Result<(), &'static str> {
    if !(3..=63).contains(&name.len()) {
        return Err("must be 3 to 63 characters long");
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'.' || b == b'-')
    {
        return Err("may contain only lowercase letters, digits, `.` and `-`");
    }
    let alnum = |b: Option<&u8>| b.is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
    if !alnum(name.as_bytes().first()) || !alnum(name.as_bytes().last()) {
        return Err("must begin and end with a letter or digit");
    }
    if name.contains("..") {
        return Err("must not contain two adjacent periods");
    }
    if name.parse::<std::net::Ipv4Addr>().is_ok() {
        return Err("must not be an IP address");
    }
    if ["xn--", "sthree-", "amzn-s3-demo-"]
        .iter()
        .any(|p| name.starts_with(p))
    {
        return Err("uses a reserved prefix");
    }
    if ["-s3alias", "--ol-s3", ".mrap", "--x-s3", "--table-s3"]
        .iter()
        .any(|s| name.ends_with(s))
    {
        return Err("uses a reserved suffix");
    }
    Ok(())
}

/// `jobs/J/aggregate/…`, `jobs/J/checkpoints/…` and `jobs/J/input/…` (docs/aws.md).
pub fn is_intermediate(relative: &str) -> bool {
    let mut parts = relative.splitn(4, '/');
    matches!(
        (parts.next(), parts.next(), parts.next(), parts.next()),
        (Some("jobs"), Some(job), Some(dir), Some(rest))
            if !job.is_empty() && !rest.is_empty() && INTERMEDIATE_DIRS.contains(&dir)
    )
}

/// The `tagging` parameter (URL query syntax) of a write to `relative`.
pub(super) fn tagging_for(relative: &str) -> Option<String> {
    is_intermediate(relative).then(|| format!("{}={}", INTERMEDIATE_TAG.0, INTERMEDIATE_TAG.1))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use orch_core::ErrorCategory;

    use super::*;

    #[test]
    fn parses_uris() {
        assert_eq!(
            parse_s3_uri("s3://my-bucket").unwrap(),
            ("my-bucket".into(), String::new())
        );
        assert_eq!(
            parse_s3_uri("s3://my-bucket/").unwrap(),
            ("my-bucket".into(), String::new())
        );
        assert_eq!(
            parse_s3_uri("s3://my.bucket/a/b").unwrap(),
            ("my.bucket".into(), "a/b/".into())
        );
        assert_eq!(
            parse_s3_uri("s3://b12/orch/").unwrap(),
            ("b12".into(), "orch/".into())
        );
        for bad in [
            "my-bucket",
            "s3:/my-bucket",
            "https://my-bucket/x",
            "s3://",
            "s3://ab",
            "s3://My-Bucket",
            "s3://-bucket",
            "s3://bucket-",
            "s3://a..b",
            "s3://192.168.1.1",
            "s3://xn--bucket",
            "s3://bucket-s3alias",
            "s3://under_score",
            "s3://bucket//",
            "s3://bucket/a//b/",
            "s3://bucket/../x",
            "s3://bucket/a/./b",
            "s3://bucket/a\\b",
            "s3://bucket/a\nb",
            "s3://bucket//x",
        ] {
            let err = parse_s3_uri(bad).unwrap_err();
            assert_eq!(err.category(), ErrorCategory::Invalid, "{bad:?}");
        }
        let long = format!("s3://{}", "a".repeat(64));
        assert!(parse_s3_uri(&long).is_err());
        let max = format!("s3://{}", "a".repeat(63));
        assert!(parse_s3_uri(&max).is_ok());
    }

    #[test]
    fn relative_keys_and_prefixes() {
        for bad in [
            "",
            "/a",
            "a//b",
            "a/",
            "..",
            "../a",
            "a/..",
            "a/./b",
            ".",
            "a\\b",
            "a\0b",
            "a\u{7f}b",
            "a/.b.tmp-12",
        ] {
            assert!(check_relative(bad, Relative::Key).is_err(), "{bad:?}");
        }
        for good in [
            "a",
            ".hidden",
            "a..b/c",
            "jobs/j-1/results/000001/1/_DONE",
            "ü/ß",
        ] {
            assert!(check_relative(good, Relative::Key).is_ok(), "{good:?}");
        }
        for good in ["", "a/", "jobs/j", "a/b/"] {
            assert!(check_relative(good, Relative::Prefix).is_ok(), "{good:?}");
        }
        for bad in ["/", "../", "a//", "a/..", "x\\"] {
            assert!(check_relative(bad, Relative::Prefix).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn intermediate_keys() {
        for yes in [
            "jobs/j1/aggregate/0/1.parquet",
            "jobs/j1/checkpoints/000001.sqlite",
            "jobs/j1/input/000003.jsonl",
        ] {
            assert!(is_intermediate(yes), "{yes}");
        }
        for no in [
            "jobs/j1/results/000001/1/part.parquet",
            "jobs/j1/job.json",
            "jobs/j1/aggregate",
            "jobs/j1/aggregate/",
            "jobs//aggregate/x",
            "other/j1/aggregate/x",
            "jobs/aggregate/x",
        ] {
            assert!(!is_intermediate(no), "{no}");
        }
    }
}
