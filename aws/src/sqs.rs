//! Placeholder: filled in by the sqs backend work.
