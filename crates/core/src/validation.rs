//! Field-level validation results shared by every domain module.

/// A problem with one field of an input: `field` is a dotted path ("deal_closed.amount").
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct FieldViolation {
    pub field: String,
    pub description: String,
}

impl FieldViolation {
    pub fn new(field: impl Into<String>, description: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            description: description.into(),
        }
    }

    /// The same violation under `prefix` ("event" + "amount" = "event.amount").
    pub fn under(mut self, prefix: &str) -> Self {
        if !prefix.is_empty() {
            self.field = if self.field.is_empty() {
                prefix.to_owned()
            } else {
                format!("{prefix}.{}", self.field)
            };
        }
        self
    }
}

/// A field path, rendered only when a violation is reported (validation of valid input
/// allocates nothing for paths).
pub trait Field {
    fn path(&self) -> String;
}

impl Field for &str {
    fn path(&self) -> String {
        (*self).to_owned()
    }
}

impl Field for String {
    fn path(&self) -> String {
        self.clone()
    }
}

impl Field for &String {
    fn path(&self) -> String {
        (*self).clone()
    }
}

/// `(prefix, name)` renders as `prefix.name`.
impl Field for (&str, &str) {
    fn path(&self) -> String {
        format!("{}.{}", self.0, self.1)
    }
}

/// Collects violations while checking an input.
#[derive(Debug, Default)]
pub struct Violations(pub Vec<FieldViolation>);

impl Violations {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn add(&mut self, field: impl Into<String>, description: impl Into<String>) {
        self.0.push(FieldViolation::new(field, description));
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// `Ok(value)` when nothing was found, else every violation.
    pub fn finish<T>(self, value: T) -> Result<T, Vec<FieldViolation>> {
        if self.0.is_empty() {
            Ok(value)
        } else {
            Err(self.0)
        }
    }

    /// Checks an identifier: present, at most `max` characters, no whitespace or control
    /// characters. Returns whether it passed.
    pub fn id(&mut self, field: impl Field, value: &str, max: usize) -> bool {
        if value.is_empty() {
            self.add(field.path(), "is required");
            false
        } else if value.len() > max && value.chars().count() > max {
            self.add(field.path(), format!("must be at most {max} characters"));
            false
        } else if value.chars().any(|c| c.is_whitespace() || c.is_control()) {
            self.add(
                field.path(),
                "must not contain whitespace or control characters",
            );
            false
        } else {
            true
        }
    }

    /// Checks an optional identifier (empty is fine).
    pub fn optional_id(&mut self, field: impl Field, value: &str, max: usize) -> bool {
        value.is_empty() || self.id(field, value, max)
    }

    /// Checks free text: at most `max` characters, no control characters but newlines/tabs.
    pub fn text(&mut self, field: impl Field, value: &str, max: usize) -> bool {
        if value.chars().count() > max {
            self.add(field.path(), format!("must be at most {max} characters"));
            false
        } else if value
            .chars()
            .any(|c| c.is_control() && c != '\n' && c != '\t' && c != '\r')
        {
            self.add(field.path(), "must not contain control characters");
            false
        } else {
            true
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_and_text() {
        let mut v = Violations::new();
        assert!(v.id("a", "rep-1", 10));
        assert!(!v.id("b", "", 10));
        assert!(!v.id("c", "has space", 20));
        assert!(!v.id("d", "x".repeat(11).as_str(), 10));
        assert!(v.optional_id("e", "", 10));
        assert!(!v.text("f", "bell\u{7}", 10));
        let got: Vec<&str> = v.0.iter().map(|f| f.field.as_str()).collect();
        assert_eq!(got, ["b", "c", "d", "f"]);
        assert_eq!(
            FieldViolation::new("amount", "x").under("event").field,
            "event.amount"
        );
    }
}
