//! Validation errors that name the field.
//!
//! In: a resource being checked, field by field, with a [`Path`] that tracks where we are.
//! Out: [`ValidationErrors`], a list of `field: message` pairs such as
//! `spec.to[0].default.http.requestTimeout: invalid duration "5 parsecs"`.

use std::fmt;

use serde::Serialize;

/// One bad value: the full path of the field and what was expected.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct FieldError {
    /// Path of the field, for example `spec.from[0].targetRef.name`.
    pub field: String,
    /// What is wrong and what was expected.
    pub message: String,
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.field.is_empty() {
            f.write_str(&self.message)
        } else {
            write!(f, "{}: {}", self.field, self.message)
        }
    }
}

/// Every problem found in one resource; never empty when returned as an error.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ValidationErrors(pub Vec<FieldError>);

impl ValidationErrors {
    /// One error at `field`.
    pub fn single(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self(vec![FieldError { field: field.into(), message: message.into() }])
    }

    /// Whether nothing was found.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// `Ok(())` when empty, else `Err(self)`.
    pub fn into_result(self) -> Result<(), ValidationErrors> {
        if self.0.is_empty() {
            Ok(())
        } else {
            Err(self)
        }
    }
}

impl fmt::Display for ValidationErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ValidationErrors {}

/// Collects errors while walking a resource; each check reports under the current path.
#[derive(Debug, Default)]
pub struct Validator {
    path: Vec<Segment>,
    errors: Vec<FieldError>,
}

#[derive(Debug, Clone)]
enum Segment {
    Field(&'static str),
    Key(String),
    Index(usize),
}

impl Validator {
    /// A validator rooted at `root` (for example `spec`).
    pub fn at(root: &'static str) -> Self {
        Self { path: vec![Segment::Field(root)], errors: Vec::new() }
    }

    /// Runs `f` one field deeper.
    pub fn field(&mut self, name: &'static str, f: impl FnOnce(&mut Self)) {
        self.path.push(Segment::Field(name));
        f(self);
        self.path.pop();
    }

    /// Runs `f` for the `i`th element of a list.
    pub fn index(&mut self, i: usize, f: impl FnOnce(&mut Self)) {
        self.path.push(Segment::Index(i));
        f(self);
        self.path.pop();
    }

    /// Runs `f` for the entry `key` of a map.
    pub fn key(&mut self, key: &str, f: impl FnOnce(&mut Self)) {
        self.path.push(Segment::Key(key.to_string()));
        f(self);
        self.path.pop();
    }

    /// Runs `f` for each element of `items`, indexed under `name`.
    pub fn each<T>(&mut self, name: &'static str, items: &[T], mut f: impl FnMut(&mut Self, &T)) {
        self.field(name, |v| {
            for (i, item) in items.iter().enumerate() {
                v.index(i, |v| f(v, item));
            }
        });
    }

    /// Reports a problem at the current path.
    pub fn error(&mut self, message: impl Into<String>) {
        let field = self.current_path();
        self.errors.push(FieldError { field, message: message.into() });
    }

    /// Reports a problem at a child field of the current path.
    pub fn error_at(&mut self, name: &'static str, message: impl Into<String>) {
        self.field(name, |v| v.error(message));
    }

    /// Reports `message` when `ok` is false.
    pub fn check(&mut self, ok: bool, message: impl FnOnce() -> String) {
        if !ok {
            self.error(message());
        }
    }

    /// The path as users see it: `spec.to[0].default`.
    pub fn current_path(&self) -> String {
        let mut out = String::new();
        for seg in &self.path {
            match seg {
                Segment::Field(name) => {
                    if !out.is_empty() {
                        out.push('.');
                    }
                    out.push_str(name);
                }
                Segment::Key(key) => {
                    out.push_str(&format!("[{key:?}]"));
                }
                Segment::Index(i) => out.push_str(&format!("[{i}]")),
            }
        }
        out
    }

    /// The errors collected so far.
    pub fn finish(self) -> Result<(), ValidationErrors> {
        ValidationErrors(self.errors).into_result()
    }
}

/// A value that checks itself, reporting under the validator's current path.
pub trait Validate {
    /// Reports every problem of `self` to `v`.
    fn validate(&self, v: &mut Validator);
}

impl<T: Validate> Validate for Option<T> {
    fn validate(&self, v: &mut Validator) {
        if let Some(inner) = self {
            inner.validate(v);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_read_like_the_yaml() {
        let mut v = Validator::at("spec");
        v.field("to", |v| v.index(2, |v| v.field("default", |v| v.error_at("idleTimeout", "bad"))));
        v.field("tags", |v| v.key("strait.io/service", |v| v.error("missing")));
        let errs = v.finish().unwrap_err();
        assert_eq!(errs.0[0].field, "spec.to[2].default.idleTimeout");
        assert_eq!(errs.0[1].field, "spec.tags[\"strait.io/service\"]");
        assert_eq!(errs.to_string(), "spec.to[2].default.idleTimeout: bad; spec.tags[\"strait.io/service\"]: missing");
    }
}
