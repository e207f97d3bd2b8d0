//! Small input checks shared by every route, each naming the field it refuses.

use crate::{Error, Result};

/// Ids that become part of store keys: 1-128 characters of `[A-Za-z0-9._:@-]`. `#` is
/// excluded because it separates key segments.
pub fn identifier(field: &str, value: &str) -> Result<()> {
    if value.is_empty() {
        return Err(Error::validation(field, "must not be empty"));
    }
    if value.len() > 128 {
        return Err(Error::validation(field, "must be at most 128 characters"));
    }
    if !value
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || "._:@-".contains(c))
    {
        return Err(Error::validation(
            field,
            "may contain only letters, digits and . _ : @ -",
        ));
    }
    Ok(())
}

/// Free text with a length limit (in characters) and no control characters.
pub fn text(field: &str, value: &str, max: usize) -> Result<()> {
    if value.chars().count() > max {
        return Err(Error::validation(
            field,
            format!("must be at most {max} characters"),
        ));
    }
    if value
        .chars()
        .any(|c| c.is_control() && c != '\n' && c != '\t')
    {
        return Err(Error::validation(
            field,
            "must not contain control characters",
        ));
    }
    Ok(())
}

/// A plausible e-mail address (`local@domain`, no spaces, at most 254 characters).
pub fn email(field: &str, value: &str) -> Result<()> {
    let ok = value.len() <= 254
        && !value.chars().any(char::is_whitespace)
        && value
            .split_once('@')
            .is_some_and(|(l, d)| !l.is_empty() && d.contains('.') && !d.starts_with('.'));
    if ok {
        Ok(())
    } else {
        Err(Error::validation(field, "must be an e-mail address"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identifiers() {
        assert!(identifier("f", "acme-1.eu_2:x@y").is_ok());
        for bad in ["", "a#b", "a b", "ä", &"x".repeat(129)] {
            let e = identifier("company_id", bad).unwrap_err();
            assert_eq!(e.field(), Some("company_id"), "{bad}");
        }
    }

    #[test]
    fn emails() {
        assert!(email("e", "ann@example.com").is_ok());
        for bad in [
            "",
            "ann",
            "@example.com",
            "ann@example",
            "a nn@example.com",
            "ann@.com",
        ] {
            assert!(email("staff_email", bad).is_err(), "{bad}");
        }
    }
}
