//! Placeholder: filled in by the s3 backend work.
