//! Topic names and topic filters: validation, shared-subscription parsing and matching.
//!
//! Pure functions, no state. The codec has already checked UTF-8 and the absence of U+0000.

/// Longest topic or filter accepted, in bytes (the UTF-8 string limit of both versions).
pub const MAX_TOPIC_LEN: usize = 65_535;

/// Why a topic name or filter is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TopicError {
    /// Zero length. MQTT 5.0 [MQTT-4.7.3-1].
    #[error("empty topic")]
    Empty,
    /// Longer than [`MAX_TOPIC_LEN`].
    #[error("topic longer than 65535 bytes")]
    TooLong,
    /// A wildcard in a topic name. MQTT 5.0 [MQTT-3.3.2-2].
    #[error("wildcard in a topic name")]
    WildcardInName,
    /// `#` not alone in the last level, or `+` not alone in its level. [MQTT-4.7.1-1], [MQTT-4.7.1-2].
    #[error("misplaced wildcard in a topic filter")]
    MisplacedWildcard,
    /// `$share/` without a group name, with a wildcard in the group, or without a filter.
    /// MQTT 5.0 [MQTT-4.8.2-1], [MQTT-4.8.2-2].
    #[error("malformed shared subscription")]
    BadShare,
}

/// Checks a topic name from a PUBLISH or a will.
pub fn validate_name(topic: &str) -> Result<(), TopicError> {
    if topic.is_empty() {
        return Err(TopicError::Empty);
    }
    if topic.len() > MAX_TOPIC_LEN {
        return Err(TopicError::TooLong);
    }
    if topic.bytes().any(|b| b == b'+' || b == b'#') {
        return Err(TopicError::WildcardInName);
    }
    Ok(())
}

/// Checks a plain (non-shared) topic filter.
pub fn validate_filter(filter: &str) -> Result<(), TopicError> {
    if filter.is_empty() {
        return Err(TopicError::Empty);
    }
    if filter.len() > MAX_TOPIC_LEN {
        return Err(TopicError::TooLong);
    }
    let mut levels = filter.split('/').peekable();
    while let Some(level) = levels.next() {
        let last = levels.peek().is_none();
        match level {
            "#" if !last => return Err(TopicError::MisplacedWildcard),
            "#" | "+" => {}
            other if other.contains(['+', '#']) => return Err(TopicError::MisplacedWildcard),
            _ => {}
        }
    }
    Ok(())
}

/// A subscription filter split into its shared group (if any) and the filter proper.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ParsedFilter<'a> {
    /// The share name of `$share/{group}/{filter}`, `None` for a normal subscription.
    pub group: Option<&'a str>,
    /// The filter that topics are matched against.
    pub filter: &'a str,
}

/// Parses and validates a SUBSCRIBE or UNSUBSCRIBE filter, shared or not.
pub fn parse_filter(raw: &str) -> Result<ParsedFilter<'_>, TopicError> {
    let Some(rest) = raw.strip_prefix("$share/") else {
        if raw == "$share" {
            return Err(TopicError::BadShare);
        }
        validate_filter(raw)?;
        return Ok(ParsedFilter {
            group: None,
            filter: raw,
        });
    };
    let (group, filter) = rest.split_once('/').ok_or(TopicError::BadShare)?;
    if group.is_empty() || group.contains(['+', '#']) || filter.is_empty() {
        return Err(TopicError::BadShare);
    }
    validate_filter(filter)?;
    Ok(ParsedFilter {
        group: Some(group),
        filter,
    })
}

/// True when a filter contains `+` or `#`.
pub fn has_wildcard(filter: &str) -> bool {
    filter.contains(['+', '#'])
}

/// True when `topic` matches `filter`. Both must be valid; `filter` is not shared.
///
/// Topics whose first level starts with `$` are not matched by a wildcard in the first level
/// of the filter. MQTT 5.0 [MQTT-4.7.2-1].
pub fn matches(filter: &str, topic: &str) -> bool {
    if topic.starts_with('$') && (filter.starts_with('+') || filter.starts_with('#')) {
        return false;
    }
    let mut f = filter.split('/');
    let mut t = topic.split('/');
    loop {
        match (f.next(), t.next()) {
            (Some("#"), _) => return true,
            (Some("+"), Some(_)) => {}
            (Some(fl), Some(tl)) if fl == tl => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_with_wildcards_are_refused() {
        assert_eq!(validate_name("a/+/b"), Err(TopicError::WildcardInName));
        assert_eq!(validate_name("a/#"), Err(TopicError::WildcardInName));
        assert_eq!(validate_name(""), Err(TopicError::Empty));
        assert!(validate_name("a//b/").is_ok());
        assert!(validate_name("/").is_ok());
        assert!(validate_name("$SYS/x").is_ok());
    }

    #[test]
    fn filters_place_wildcards_alone_in_a_level() {
        for ok in [
            "#", "+", "a/#", "+/+", "a/+/b", "/+", "+/", "a//#", "$SYS/#",
        ] {
            assert!(validate_filter(ok).is_ok(), "{ok}");
        }
        for bad in ["a#", "a/#/b", "a+", "a/b+/c", "#/a", "++", "a/##"] {
            assert_eq!(
                validate_filter(bad),
                Err(TopicError::MisplacedWildcard),
                "{bad}"
            );
        }
        assert_eq!(validate_filter(""), Err(TopicError::Empty));
    }

    #[test]
    fn shared_filters_name_group_and_filter() {
        let p = parse_filter("$share/g1/sensors/+/t").unwrap();
        assert_eq!(p.group, Some("g1"));
        assert_eq!(p.filter, "sensors/+/t");
        assert_eq!(parse_filter("a/b").unwrap().group, None);
        for bad in [
            "$share/g",
            "$share//a",
            "$share/g+/a",
            "$share/g/",
            "$share",
            "$share/g/a#",
        ] {
            assert!(parse_filter(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn wildcards_match_as_the_spec_examples_say() {
        // MQTT 5.0 section 4.7.1.2 and 4.7.1.3 examples.
        assert!(matches("sport/tennis/player1/#", "sport/tennis/player1"));
        assert!(matches(
            "sport/tennis/player1/#",
            "sport/tennis/player1/ranking"
        ));
        assert!(matches(
            "sport/tennis/player1/#",
            "sport/tennis/player1/score/wimbledon"
        ));
        assert!(matches("sport/#", "sport"));
        assert!(matches("sport/tennis/+", "sport/tennis/player1"));
        assert!(!matches("sport/tennis/+", "sport/tennis/player1/ranking"));
        assert!(!matches("sport/+", "sport"));
        assert!(matches("sport/+", "sport/"));
        assert!(matches("+/+", "/finance"));
        assert!(matches("/+", "/finance"));
        assert!(!matches("+", "/finance"));
        assert!(matches("#", "a/b/c"));
        assert!(!matches("a/b", "a/b/c"));
        assert!(!matches("a/b/c", "a/b"));
    }

    #[test]
    fn dollar_topics_escape_first_level_wildcards() {
        assert!(!matches("#", "$SYS/broker/uptime"));
        assert!(!matches("+/monitor/Clients", "$SYS/monitor/Clients"));
        assert!(matches("$SYS/#", "$SYS/monitor/Clients"));
        assert!(matches("$SYS/monitor/+", "$SYS/monitor/Clients"));
    }
}
