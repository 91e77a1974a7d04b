//! Placeholder: filled in by the dynamodb backend work.
