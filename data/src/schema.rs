//! Schema unification across result files.
//!
//! Every task infers its own schema (see [`crate::results`]), so task A may see only integers
//! where task B saw a fraction, or miss a key entirely. Aggregation needs one schema for the
//! whole job; this module computes it from the input footers with the same lattice the
//! per-task inference uses, so merging never contradicts what a single task would have
//! written for the union of the rows:
//!
//! - columns are the union by name, in first-seen order, `_item` first;
//! - a column missing from some input is nullable there and null-filled;
//! - `Null` joined with `T` is `T`; `Int64` with `Float64` is `Float64` (as is `UInt64` with
//!   either, mirroring "integers above `i64::MAX` become floats");
//! - any other disagreement (including `Boolean` with anything else) becomes `Utf8`;
//! - narrower foreign types are widened first (`Int8..Int32`, `UInt8..UInt32` to `Int64`,
//!   `Float16/32` to `Float64`, large/view strings to `Utf8`); other types are rendered as
//!   text, which keeps the output within the five types [`ColumnSchema`] names;
//! - a column that is `Null` everywhere is written as `Utf8` nulls, as a task would.
//!
//! A task whose rows never had a value for a column writes it as `Utf8` nulls but marks the
//! field with [`NULL_ONLY_METADATA_KEY`]. The merge treats such a column as untyped (`Null`),
//! so an optional field that happened to be null throughout one batch does not turn the whole
//! job's column into text; merged output keeps the mark where a column is still null-only,
//! so merges of merges behave the same.

use std::collections::HashMap;
use std::path::Path;

use arrow_cast::can_cast_types;
use arrow_schema::{DataType, Field, Schema};

use crate::Result;
use crate::error::DataError;
use crate::results::ITEM_COLUMN;

/// One column of a merged output, as recorded in `_SUCCESS`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ColumnSchema {
    pub name: String,
    /// `"uint64"`, `"int64"`, `"float64"`, `"bool"` or `"string"`; `"json"` for a declared
    /// `json` column (text holding JSON).
    pub r#type: String,
    pub nullable: bool,
}

impl ColumnSchema {
    pub fn from_field(field: &Field) -> Self {
        let declared = field
            .metadata()
            .get(TYPE_METADATA_KEY)
            .filter(|t| field.data_type() == &DataType::Utf8 && t.as_str() == "json");
        ColumnSchema {
            name: field.name().clone(),
            r#type: declared
                .cloned()
                .unwrap_or_else(|| type_name(field.data_type())),
            nullable: field.is_nullable(),
        }
    }
}

/// Arrow field metadata key naming a declared column type the Arrow type does not show
/// (`json`, stored as `Utf8`); see [`crate::declared`].
pub const TYPE_METADATA_KEY: &str = "orch:type";

/// The `_SUCCESS` name of an Arrow type. The merge only produces the five named types; others
/// (from callers that pass arbitrary fields) fall back to Arrow's own lowercase name.
pub fn type_name(dt: &DataType) -> String {
    match dt {
        DataType::UInt64 => "uint64".into(),
        DataType::Int64 => "int64".into(),
        DataType::Float64 => "float64".into(),
        DataType::Boolean => "bool".into(),
        DataType::Utf8 => "string".into(),
        other => other.to_string().to_lowercase(),
    }
}

/// Arrow field metadata key marking a column that holds only nulls and so has no type of its
/// own (it is stored as `Utf8` because that is the most neutral Parquet column).
pub const NULL_ONLY_METADATA_KEY: &str = "orch:null_only";

/// A nullable `Utf8` field marked as null-only.
pub(crate) fn null_only_field(name: &str) -> Field {
    Field::new(name, DataType::Utf8, true).with_metadata(HashMap::from([(
        NULL_ONLY_METADATA_KEY.to_owned(),
        "true".to_owned(),
    )]))
}

/// Whether a column carries no type information: Arrow `Null`, or marked null-only.
pub(crate) fn is_null_only(field: &Field) -> bool {
    field.data_type() == &DataType::Null
        || field
            .metadata()
            .get(NULL_ONLY_METADATA_KEY)
            .is_some_and(|v| v == "true")
}

/// Maps an input column type onto the merge lattice, or `None` if it cannot even be rendered
/// as text.
fn normalize(dt: &DataType) -> Option<DataType> {
    Some(match dt {
        DataType::Null => DataType::Null,
        DataType::Boolean => DataType::Boolean,
        DataType::Int8
        | DataType::Int16
        | DataType::Int32
        | DataType::Int64
        | DataType::UInt8
        | DataType::UInt16
        | DataType::UInt32 => DataType::Int64,
        DataType::UInt64 => DataType::UInt64,
        DataType::Float16 | DataType::Float32 | DataType::Float64 => DataType::Float64,
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => DataType::Utf8,
        other if can_cast_types(other, &DataType::Utf8) => DataType::Utf8,
        _ => return None,
    })
}

fn join(a: &DataType, b: &DataType) -> DataType {
    use DataType::*;
    match (a, b) {
        (a, b) if a == b => a.clone(),
        (Null, x) | (x, Null) => x.clone(),
        (Int64 | UInt64 | Float64, Int64 | UInt64 | Float64) => Float64,
        _ => Utf8,
    }
}

/// Accumulates input schemas into the unified one.
#[derive(Debug, Default)]
pub(crate) struct SchemaUnifier {
    /// Result columns (everything but `_item`) in first-seen order.
    columns: Vec<(String, DataType, bool)>,
    index: HashMap<String, usize>,
    /// Inputs seen so far; a column first seen after input 0 was missing before.
    inputs: usize,
}

impl SchemaUnifier {
    pub(crate) fn add(&mut self, schema: &Schema, path: &Path) -> Result<()> {
        let item = schema.field_with_name(ITEM_COLUMN).map_err(|_| {
            DataError::invalid(
                path,
                format!("result file lacks the `{ITEM_COLUMN}` column"),
            )
        })?;
        if item.data_type() != &DataType::UInt64 {
            return Err(DataError::SchemaConflict {
                path: path.to_path_buf(),
                column: ITEM_COLUMN.into(),
                detail: format!("expected uint64, found {}", item.data_type()),
            });
        }
        let mut present = vec![false; self.columns.len()];
        for field in schema.fields() {
            if field.name() == ITEM_COLUMN {
                continue;
            }
            let dt = if is_null_only(field) {
                Some(DataType::Null)
            } else {
                normalize(field.data_type())
            };
            let dt = dt.ok_or_else(|| DataError::SchemaConflict {
                path: path.to_path_buf(),
                column: field.name().clone(),
                detail: format!(
                    "type {} cannot be merged or cast to text",
                    field.data_type()
                ),
            })?;
            match self.index.get(field.name()) {
                Some(&i) => {
                    let (name, ty, nullable) = &mut self.columns[i];
                    let joined = join(ty, &dt);
                    // A column that is text because its types disagree is worth a warning:
                    // numbers turned into strings surprise whoever reads the output.
                    if joined == DataType::Utf8
                        && *ty != dt
                        && *ty != DataType::Null
                        && dt != DataType::Null
                    {
                        tracing::warn!(
                            column = %name,
                            was = %type_name(ty),
                            found = %type_name(&dt),
                            file = %path.display(),
                            "column types conflict across tasks; storing it as text"
                        );
                    }
                    *ty = joined;
                    *nullable |= field.is_nullable();
                    if let Some(p) = present.get_mut(i) {
                        *p = true;
                    }
                }
                None => {
                    self.index.insert(field.name().clone(), self.columns.len());
                    // Missing from every earlier input, hence null there.
                    let nullable = field.is_nullable() || self.inputs > 0;
                    self.columns.push((field.name().clone(), dt, nullable));
                }
            }
        }
        for (i, p) in present.iter().enumerate() {
            if !p {
                self.columns[i].2 = true;
            }
        }
        self.inputs += 1;
        Ok(())
    }

    /// The unified schema, `_item` first.
    pub(crate) fn finish(self) -> Schema {
        let mut fields = Vec::with_capacity(self.columns.len() + 1);
        fields.push(Field::new(ITEM_COLUMN, DataType::UInt64, false));
        for (name, dt, nullable) in self.columns {
            if dt == DataType::Null {
                fields.push(null_only_field(&name));
            } else {
                fields.push(Field::new(name, dt, nullable));
            }
        }
        Schema::new(fields)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn schema(cols: &[(&str, DataType, bool)]) -> Schema {
        let mut f = vec![Field::new(ITEM_COLUMN, DataType::UInt64, false)];
        f.extend(cols.iter().map(|(n, t, nl)| Field::new(*n, t.clone(), *nl)));
        Schema::new(f)
    }

    #[test]
    fn unify_widens_and_orders() {
        let p = Path::new("x");
        let mut u = SchemaUnifier::default();
        u.add(
            &schema(&[
                ("a", DataType::Int64, true),
                ("b", DataType::Boolean, false),
            ]),
            p,
        )
        .unwrap();
        u.add(
            &schema(&[
                ("c", DataType::Null, true),
                ("a", DataType::Float64, true),
                ("b", DataType::Int64, false),
            ]),
            p,
        )
        .unwrap();
        u.add(&schema(&[("a", DataType::Int32, false)]), p).unwrap();
        let s = u.finish();
        let got: Vec<(String, DataType, bool)> = s
            .fields()
            .iter()
            .map(|f| (f.name().clone(), f.data_type().clone(), f.is_nullable()))
            .collect();
        assert_eq!(
            got,
            vec![
                (ITEM_COLUMN.into(), DataType::UInt64, false),
                ("a".into(), DataType::Float64, true),
                // Missing in the third input.
                ("b".into(), DataType::Utf8, true),
                // Null everywhere, missing in the first input.
                ("c".into(), DataType::Utf8, true),
            ]
        );
    }

    #[test]
    fn non_null_column_present_everywhere_stays_non_null() {
        let p = Path::new("x");
        let mut u = SchemaUnifier::default();
        u.add(&schema(&[("a", DataType::Int64, false)]), p).unwrap();
        u.add(&schema(&[("a", DataType::Int16, false)]), p).unwrap();
        let s = u.finish();
        assert!(!s.field(1).is_nullable());
        assert_eq!(s.field(1).data_type(), &DataType::Int64);
    }

    #[test]
    fn item_column_is_required() {
        let p = Path::new("x");
        let mut u = SchemaUnifier::default();
        let s = Schema::new(vec![Field::new("a", DataType::Int64, true)]);
        assert!(matches!(
            u.add(&s, p).unwrap_err(),
            DataError::InvalidFile { .. }
        ));
        let s = Schema::new(vec![Field::new(ITEM_COLUMN, DataType::Int64, false)]);
        assert!(matches!(
            u.add(&s, p).unwrap_err(),
            DataError::SchemaConflict { .. }
        ));
    }

    #[test]
    fn null_only_columns_take_the_other_type_and_keep_their_mark() {
        let p = Path::new("x");
        let mut u = SchemaUnifier::default();
        let marked = Schema::new(vec![
            Field::new(ITEM_COLUMN, DataType::UInt64, false),
            null_only_field("n"),
            null_only_field("m"),
        ]);
        u.add(&marked, p).unwrap();
        u.add(&schema(&[("n", DataType::Float64, true)]), p)
            .unwrap();
        let s = u.finish();
        assert_eq!(s.field(1).data_type(), &DataType::Float64);
        assert!(!is_null_only(s.field(1)));
        assert_eq!(s.field(2).data_type(), &DataType::Utf8);
        assert!(is_null_only(s.field(2)));
        // An unmarked text column stays text.
        let mut u = SchemaUnifier::default();
        u.add(&schema(&[("n", DataType::Utf8, true)]), p).unwrap();
        u.add(&schema(&[("n", DataType::Float64, true)]), p)
            .unwrap();
        assert_eq!(u.finish().field(1).data_type(), &DataType::Utf8);
    }

    #[test]
    fn type_names() {
        assert_eq!(type_name(&DataType::Boolean), "bool");
        assert_eq!(type_name(&DataType::Utf8), "string");
        assert_eq!(type_name(&DataType::UInt64), "uint64");
    }
}
