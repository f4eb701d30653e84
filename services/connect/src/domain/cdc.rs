//! Salesforce event payloads: Avro datums written with the schema `GetSchema` returns,
//! decoded into [`Fields`]; for Change Data Capture, the `ChangeEventHeader` and its field
//! bitmaps (`changedFields`, `nulledFields`: hex bitsets over the schema's field positions,
//! `"<parent position>-<hex>"` for the fields of a compound field).

use apache_avro::Schema;
use apache_avro::schema::RecordSchema;
use apache_avro::types::Value as Avro;
use serde_json::Value;

use super::mapping::Fields;

/// What a CDC change says happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChangeType {
    Create,
    Update,
    Delete,
    Undelete,
    /// GAP_*: the change happened but its fields were not captured; the record must be
    /// read again to know them.
    Gap,
}

/// One decoded event.
#[derive(Debug, Clone, PartialEq)]
pub struct Decoded {
    /// For a change event: the entity (`Opportunity`) and what changed; `None` for a
    /// platform event.
    pub change: Option<Change>,
    /// The non-null fields (for an update: the changed ones).
    pub fields: Fields,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Change {
    pub entity: String,
    pub record_ids: Vec<String>,
    pub change_type: ChangeType,
    pub commit_timestamp_ms: i64,
    /// The transaction's system change number (increases with every commit) and the
    /// change's place in it: together, the order of a record's changes.
    pub commit_number: i64,
    pub sequence_number: i32,
    /// Fields set to null by the change (decoded from the bitmap).
    pub nulled: Vec<String>,
    pub changed: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecodeError(pub String);

impl std::fmt::Display for DecodeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// Parses a schema `GetSchema` returned.
pub fn parse_schema(json: &str) -> Result<Schema, DecodeError> {
    Schema::parse_str(json).map_err(|e| DecodeError(format!("the Avro schema does not parse: {e}")))
}

fn record(schema: &Schema) -> Option<&RecordSchema> {
    match schema {
        Schema::Record(r) => Some(r),
        Schema::Union(u) => u.variants().iter().find_map(record),
        _ => None,
    }
}

/// The mapping's fields (`wanted`) that the schema does not have: a schema change the
/// mapping must follow. Dotted names refer to a compound field's parts.
pub fn missing_fields<'a>(schema: &Schema, wanted: &[&'a str]) -> Vec<&'a str> {
    let Some(top) = record(schema) else {
        return wanted.to_vec();
    };
    wanted
        .iter()
        .copied()
        .filter(|w| {
            let mut parts = w.split('.');
            let first = parts.next().unwrap_or_default();
            let Some(f) = top.fields.iter().find(|f| f.name == first) else {
                return true;
            };
            match parts.next() {
                None => false,
                Some(child) => {
                    !record(&f.schema).is_some_and(|r| r.fields.iter().any(|c| c.name == child))
                }
            }
        })
        .collect()
}

/// Decodes one payload.
pub fn decode(schema: &Schema, payload: &[u8]) -> Result<Decoded, DecodeError> {
    let mut reader = payload;
    let value = apache_avro::from_avro_datum(schema, &mut reader, None)
        .map_err(|e| DecodeError(format!("the payload does not decode with its schema: {e}")))?;
    let Avro::Record(items) = value else {
        return Err(DecodeError("the payload is not an Avro record".into()));
    };
    let top = record(schema).ok_or_else(|| DecodeError("the schema is not a record".into()))?;
    let mut fields = Fields::new();
    let mut header = None;
    for (name, v) in items {
        if name == "ChangeEventHeader" {
            header = Some(v);
            continue;
        }
        flatten(&name, json(v), &mut fields);
    }
    let change = match header {
        None => None,
        Some(h) => Some(change(h, top)?),
    };
    Ok(Decoded { change, fields })
}

/// Puts a field in, and a compound field's parts as `Parent.Child` too.
fn flatten(name: &str, v: Value, out: &mut Fields) {
    if v.is_null() {
        return;
    }
    if let Value::Object(m) = &v {
        for (k, c) in m {
            if !c.is_null() {
                out.insert(format!("{name}.{k}"), c.clone());
            }
        }
    }
    out.insert(name.to_owned(), v);
}

/// JSON for an Avro value. Floating-point numbers become their shortest decimal text, so
/// that an amount Salesforce typed as `double` reaches the money code as the decimal the
/// user entered, never as a binary float.
fn json(v: Avro) -> Value {
    match v {
        Avro::Null => Value::Null,
        Avro::Boolean(b) => Value::Bool(b),
        Avro::Int(i) | Avro::Date(i) | Avro::TimeMillis(i) => Value::from(i),
        Avro::Long(i)
        | Avro::TimestampMillis(i)
        | Avro::TimestampMicros(i)
        | Avro::TimeMicros(i)
        | Avro::LocalTimestampMillis(i)
        | Avro::LocalTimestampMicros(i) => Value::from(i),
        Avro::Float(f) => Value::String(f.to_string()),
        Avro::Double(f) => Value::String(f.to_string()),
        Avro::String(s) | Avro::Enum(_, s) => Value::String(s),
        Avro::Union(_, b) => json(*b),
        Avro::Array(a) => Value::Array(a.into_iter().map(json).collect()),
        Avro::Map(m) => Value::Object(m.into_iter().map(|(k, v)| (k, json(v))).collect()),
        Avro::Record(r) => Value::Object(r.into_iter().map(|(k, v)| (k, json(v))).collect()),
        Avro::Bytes(b) | Avro::Fixed(_, b) => Value::String(hex::encode(b)),
        Avro::Uuid(u) => Value::String(u.to_string()),
        other => Value::String(format!("{other:?}")),
    }
}

fn change(h: Avro, top: &RecordSchema) -> Result<Change, DecodeError> {
    let Value::Object(h) = json(h) else {
        return Err(DecodeError("ChangeEventHeader is not a record".into()));
    };
    let s = |k: &str| {
        h.get(k)
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned()
    };
    let list = |k: &str| -> Vec<String> {
        h.get(k)
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(|x| x.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default()
    };
    let change_type = match s("changeType").as_str() {
        "CREATE" => ChangeType::Create,
        "UPDATE" => ChangeType::Update,
        "DELETE" => ChangeType::Delete,
        "UNDELETE" => ChangeType::Undelete,
        t if t.starts_with("GAP_") => ChangeType::Gap,
        t => {
            return Err(DecodeError(format!(
                "ChangeEventHeader.changeType {t:?} is unknown"
            )));
        }
    };
    let entity = s("entityName");
    let record_ids = list("recordIds");
    if entity.is_empty() || record_ids.is_empty() {
        return Err(DecodeError(
            "ChangeEventHeader has no entityName or recordIds".into(),
        ));
    }
    Ok(Change {
        entity,
        record_ids,
        change_type,
        commit_timestamp_ms: h
            .get("commitTimestamp")
            .and_then(Value::as_i64)
            .unwrap_or(0),
        commit_number: h.get("commitNumber").and_then(Value::as_i64).unwrap_or(0),
        sequence_number: h
            .get("sequenceNumber")
            .and_then(Value::as_i64)
            .and_then(|n| i32::try_from(n).ok())
            .unwrap_or(0),
        nulled: bitmap_fields(top, &list("nulledFields"))?,
        changed: bitmap_fields(top, &list("changedFields"))?,
    })
}

/// The field names a CDC bitmap list names.
pub fn bitmap_fields(top: &RecordSchema, bitmaps: &[String]) -> Result<Vec<String>, DecodeError> {
    let mut out = Vec::new();
    for b in bitmaps {
        match b.split_once('-') {
            None => {
                for i in bits(b)? {
                    out.push(field_at(top, i)?.to_owned());
                }
            }
            Some((parent, child_bits)) => {
                let p: usize = parent
                    .parse()
                    .map_err(|_| DecodeError(format!("bitmap {b:?}: bad parent position")))?;
                let pf = top
                    .fields
                    .get(p)
                    .ok_or_else(|| DecodeError(format!("bitmap {b:?}: no field at {p}")))?;
                let child = record(&pf.schema).ok_or_else(|| {
                    DecodeError(format!("bitmap {b:?}: {} is not a compound field", pf.name))
                })?;
                for i in bits(child_bits)? {
                    out.push(format!("{}.{}", pf.name, field_at(child, i)?));
                }
            }
        }
    }
    Ok(out)
}

fn field_at(r: &RecordSchema, i: usize) -> Result<&str, DecodeError> {
    r.fields.get(i).map(|f| f.name.as_str()).ok_or_else(|| {
        DecodeError(format!(
            "bitmap names field {i}, the schema has {}",
            r.fields.len()
        ))
    })
}

/// The set bit positions of a `0x...` hex bitmap, least significant bit = position 0.
fn bits(hexs: &str) -> Result<Vec<usize>, DecodeError> {
    let digits = hexs
        .strip_prefix("0x")
        .ok_or_else(|| DecodeError(format!("bitmap {hexs:?} does not start with 0x")))?;
    let mut out = Vec::new();
    for (k, c) in digits.chars().rev().enumerate() {
        let n = c
            .to_digit(16)
            .ok_or_else(|| DecodeError(format!("bitmap {hexs:?} is not hex")))?;
        for bit in 0..4 {
            if n & (1 << bit) != 0 {
                out.push(k * 4 + bit);
            }
        }
    }
    Ok(out)
}

/// The bitmap (`0x...`) for field positions, the inverse of [`bits`] (for the test fake
/// and this module's tests).
pub fn bitmap(positions: &[usize]) -> String {
    let top = positions.iter().max().map_or(0, |m| m / 4);
    let mut digits = vec![0u32; top + 1];
    for p in positions {
        digits[p / 4] |= 1 << (p % 4);
    }
    let s: String = digits
        .iter()
        .rev()
        .map(|d| {
            char::from_digit(*d, 16)
                .expect("nibble")
                .to_ascii_uppercase()
        })
        .collect();
    format!("0x{s}")
}

#[cfg(test)]
mod tests {
    use super::*;

    const SCHEMA: &str = r#"{"type": "record", "name": "OpportunityChangeEvent", "fields": [
        {"name": "ChangeEventHeader", "type": {"type": "record", "name": "ChangeEventHeader", "fields": [
            {"name": "entityName", "type": "string"},
            {"name": "recordIds", "type": {"type": "array", "items": "string"}},
            {"name": "changeType", "type": {"type": "enum", "name": "ChangeType", "symbols": ["CREATE", "UPDATE", "DELETE", "UNDELETE", "GAP_UPDATE"]}},
            {"name": "commitTimestamp", "type": "long"},
            {"name": "commitNumber", "type": "long"},
            {"name": "sequenceNumber", "type": "int"},
            {"name": "nulledFields", "type": {"type": "array", "items": "string"}},
            {"name": "changedFields", "type": {"type": "array", "items": "string"}}]}},
        {"name": "StageName", "type": ["null", "string"], "default": null},
        {"name": "Amount", "type": ["null", "double"], "default": null},
        {"name": "CloseDate", "type": ["null", {"type": "int", "logicalType": "date"}], "default": null},
        {"name": "Name", "type": ["null", {"type": "record", "name": "Name", "fields": [
            {"name": "First", "type": ["null", "string"], "default": null},
            {"name": "Last", "type": ["null", "string"], "default": null}]}], "default": null}]}"#;

    fn strings(v: &[&str]) -> Avro {
        Avro::Array(v.iter().map(|s| Avro::String((*s).into())).collect())
    }

    #[test]
    fn an_update_decodes_to_its_changed_fields_header_and_bitmaps() {
        let schema = parse_schema(SCHEMA).expect("schema");
        let datum = Avro::Record(vec![
            (
                "ChangeEventHeader".into(),
                Avro::Record(vec![
                    ("entityName".into(), Avro::String("Opportunity".into())),
                    ("recordIds".into(), strings(&["006A", "006B"])),
                    ("changeType".into(), Avro::Enum(1, "UPDATE".into())),
                    ("commitTimestamp".into(), Avro::Long(1_767_000_000_000)),
                    ("commitNumber".into(), Avro::Long(42)),
                    ("sequenceNumber".into(), Avro::Int(3)),
                    // CloseDate (position 3) set to null; Name.Last (4-0x2) too.
                    ("nulledFields".into(), strings(&["0x8", "4-0x2"])),
                    ("changedFields".into(), strings(&["0xE"])),
                ]),
            ),
            (
                "StageName".into(),
                Avro::Union(1, Box::new(Avro::String("Closed Won".into()))),
            ),
            (
                "Amount".into(),
                Avro::Union(1, Box::new(Avro::Double(1234.56))),
            ),
            ("CloseDate".into(), Avro::Union(0, Box::new(Avro::Null))),
            ("Name".into(), Avro::Union(0, Box::new(Avro::Null))),
        ]);
        let bytes = apache_avro::to_avro_datum(&schema, datum).expect("encode");
        let d = decode(&schema, &bytes).expect("decode");
        let c = d.change.expect("a change event");
        assert_eq!(c.entity, "Opportunity");
        assert_eq!(c.record_ids, ["006A", "006B"]);
        assert_eq!(c.change_type, ChangeType::Update);
        assert_eq!((c.commit_number, c.sequence_number), (42, 3));
        assert_eq!(c.nulled, ["CloseDate", "Name.Last"]);
        assert_eq!(c.changed, ["StageName", "Amount", "CloseDate"]);
        // The double arrives as the decimal text that was typed, nulls are absent.
        assert_eq!(
            d.fields.get("Amount"),
            Some(&Value::String("1234.56".into()))
        );
        assert_eq!(
            d.fields.get("StageName"),
            Some(&Value::String("Closed Won".into()))
        );
        assert!(!d.fields.contains_key("CloseDate"));
        assert!(
            decode(&schema, &[0xff, 0xff]).is_err(),
            "garbage does not decode"
        );
    }

    #[test]
    fn missing_fields_name_what_the_schema_lost() {
        let schema = parse_schema(SCHEMA).expect("schema");
        assert_eq!(
            missing_fields(
                &schema,
                &["StageName", "Amount", "OwnerId", "Name.Last", "Name.Middle"]
            ),
            ["OwnerId", "Name.Middle"]
        );
    }

    #[test]
    fn bitmaps_round_trip_and_name_schema_positions() {
        assert_eq!(bits("0x1C").unwrap(), [2, 3, 4]);
        assert_eq!(bitmap(&[2, 3, 4]), "0x1C");
        assert_eq!(bits(&bitmap(&[0, 9, 17])).unwrap(), [0, 9, 17]);
        assert!(bits("1C").is_err());
    }
}
