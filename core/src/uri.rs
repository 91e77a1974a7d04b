//! Where things live: the URIs of a job spec (`file:///…`, relative paths, `s3://…`) parsed once
//! into a [`Location`], so that backends are chosen from the scheme in one place.

use std::path::{Path, PathBuf};

/// A parsed storage location.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location {
    /// A path on the local (or shared) filesystem; always absolute once resolved.
    Local(PathBuf),
    /// An S3 bucket and key prefix.
    S3 { bucket: String, key: String },
}

impl Location {
    /// Parses `uri`; relative paths are taken relative to `base`.
    pub fn parse(uri: &str, base: &Path) -> Result<Location, String> {
        if let Some(rest) = uri.strip_prefix("s3://") {
            let (bucket, key) = rest.split_once('/').unwrap_or((rest, ""));
            if bucket.is_empty() {
                return Err(format!("`{uri}` has no bucket name"));
            }
            return Ok(Location::S3 {
                bucket: bucket.to_string(),
                key: key.to_string(),
            });
        }
        if let Some(path) = uri.strip_prefix("file://") {
            if !path.starts_with('/') {
                return Err(format!(
                    "`{uri}`: file:// URIs need an absolute path (file:///data/x.jsonl)"
                ));
            }
            return Ok(Location::Local(PathBuf::from(path)));
        }
        if let Some((scheme, _)) = uri.split_once("://") {
            return Err(format!(
                "`{uri}`: unsupported scheme `{scheme}://` (use a path, file:// or s3://)"
            ));
        }
        let path = Path::new(uri);
        Ok(Location::Local(if path.is_absolute() {
            path.to_path_buf()
        } else {
            base.join(path)
        }))
    }

    /// The local path of an absolute URI from a resolved spec; `s3://` needs the AWS data plane,
    /// which this build does not have yet.
    pub fn local_path(uri: &str) -> Result<PathBuf, String> {
        match Location::parse(uri, Path::new("/"))? {
            Location::Local(p) => Ok(p),
            Location::S3 { .. } => Err(format!(
                "`{uri}`: s3:// locations need the AWS data plane, which this build does not have yet"
            )),
        }
    }

    /// The URI form written into snapshots (absolute, so workers need no job-file directory).
    pub fn to_uri(&self) -> String {
        match self {
            Location::Local(p) => format!("file://{}", p.display()),
            Location::S3 { bucket, key } => format!("s3://{bucket}/{key}"),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_forms_of_a_spec() {
        let base = Path::new("/jobs");
        assert_eq!(
            Location::parse("data.jsonl", base).unwrap(),
            Location::Local("/jobs/data.jsonl".into())
        );
        assert_eq!(
            Location::parse("file:///d/x.jsonl", base).unwrap(),
            Location::Local("/d/x.jsonl".into())
        );
        assert_eq!(
            Location::parse("s3://b/k/x.jsonl", base).unwrap(),
            Location::S3 {
                bucket: "b".into(),
                key: "k/x.jsonl".into()
            }
        );
        assert!(Location::parse("file://rel", base).is_err());
        assert!(Location::parse("gs://b/k", base).is_err());
        assert!(Location::parse("s3:///k", base).is_err());
    }
}
