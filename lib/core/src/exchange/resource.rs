//! Graph's resource paths and change types in the variations Graph documents and sends:
//! `Users/{id}/Events/{id}`, `users/{id}/events/{id}`, `Users('{id}')/Events('{id}')`, with
//! or without a leading slash or an API version; `changeType` in any case.

/// The mailbox and event id a notification's `resource` names.
pub fn parse_event_resource(resource: &str) -> Option<(String, String)> {
    let segments: Vec<String> = resource
        .trim_matches('/')
        .split('/')
        .flat_map(split_key_segment)
        .collect();
    let lower: Vec<String> = segments.iter().map(|s| s.to_ascii_lowercase()).collect();
    let start = match lower.first().map(String::as_str) {
        Some("v1.0") | Some("beta") => 1,
        _ => 0,
    };
    let rest = &lower[start..];
    let orig = &segments[start..];
    match rest {
        [u, _, e, _] if u == "users" && e == "events" => Some((orig[1].clone(), orig[3].clone())),
        [u, _, c, _, e, _] if u == "users" && c == "calendars" && e == "events" => {
            Some((orig[1].clone(), orig[5].clone()))
        }
        _ => None,
    }
}

/// `Users('abc')` -> `Users`, `abc`.
fn split_key_segment(segment: &str) -> Vec<String> {
    match segment.split_once('(') {
        Some((name, key)) if key.ends_with(')') => {
            let key = key.trim_end_matches(')').trim_matches('\'');
            vec![name.to_string(), key.to_string()]
        }
        _ => vec![segment.to_string()],
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChangeType {
    Created,
    Updated,
    Deleted,
}

impl ChangeType {
    pub fn parse(s: &str) -> Option<ChangeType> {
        match s.trim().to_ascii_lowercase().as_str() {
            "created" => Some(ChangeType::Created),
            "updated" => Some(ChangeType::Updated),
            "deleted" => Some(ChangeType::Deleted),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_documented_resource_form_parses() {
        for r in [
            "Users/u-1/Events/AAMk=",
            "users/u-1/events/AAMk=",
            "Users('u-1')/Events('AAMk=')",
            "/v1.0/users/u-1/events/AAMk=",
            "users/u-1/calendars/cal/events/AAMk=",
        ] {
            assert_eq!(
                parse_event_resource(r),
                Some(("u-1".to_string(), "AAMk=".to_string())),
                "{r}"
            );
        }
        assert_eq!(parse_event_resource("users/u-1/messages/x"), None);
        assert_eq!(parse_event_resource(""), None);
    }

    #[test]
    fn change_types_in_any_case() {
        assert_eq!(ChangeType::parse("Updated"), Some(ChangeType::Updated));
        assert_eq!(ChangeType::parse("DELETED"), Some(ChangeType::Deleted));
        assert_eq!(ChangeType::parse("moved"), None);
    }
}
