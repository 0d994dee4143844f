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
    /// More levels than the broker accepts (deep topics would make matching recurse deeply).
    #[error("too many topic levels")]
    TooManyLevels,
    /// `$share/` without a group name, with a wildcard in the group, or without a filter.
    /// MQTT 5.0 [MQTT-4.8.2-1], [MQTT-4.8.2-2].
    #[error("malformed shared subscription")]
    BadShare,
}

/// Checks a topic name from a PUBLISH or a will; `max_levels` bounds its `/`-separated levels.
pub fn validate_name(topic: &str, max_levels: usize) -> Result<(), TopicError> {
    if topic.is_empty() {
        return Err(TopicError::Empty);
    }
    if topic.len() > MAX_TOPIC_LEN {
        return Err(TopicError::TooLong);
    }
    check_levels(topic, max_levels)?;
    if topic.bytes().any(|b| b == b'+' || b == b'#') {
        return Err(TopicError::WildcardInName);
    }
    Ok(())
}

fn check_levels(s: &str, max_levels: usize) -> Result<(), TopicError> {
    if s.bytes().filter(|&b| b == b'/').count() >= max_levels {
        return Err(TopicError::TooManyLevels);
    }
    Ok(())
}

/// Checks a plain (non-shared) topic filter.
pub fn validate_filter(filter: &str, max_levels: usize) -> Result<(), TopicError> {
    if filter.is_empty() {
        return Err(TopicError::Empty);
    }
    if filter.len() > MAX_TOPIC_LEN {
        return Err(TopicError::TooLong);
    }
    check_levels(filter, max_levels)?;
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
pub fn parse_filter(raw: &str, max_levels: usize) -> Result<ParsedFilter<'_>, TopicError> {
    let Some(rest) = raw.strip_prefix("$share/") else {
        if raw == "$share" {
            return Err(TopicError::BadShare);
        }
        validate_filter(raw, max_levels)?;
        return Ok(ParsedFilter {
            group: None,
            filter: raw,
        });
    };
    let (group, filter) = rest.split_once('/').ok_or(TopicError::BadShare)?;
    if group.is_empty() || group.contains(['+', '#']) || filter.is_empty() {
        return Err(TopicError::BadShare);
    }
    validate_filter(filter, max_levels)?;
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

    fn validate_name_t(t: &str) -> Result<(), TopicError> {
        validate_name(t, 128)
    }

    #[test]
    fn deep_topics_are_refused_past_the_level_limit() {
        let deep = "/".repeat(127);
        assert!(validate_name(&deep, 128).is_ok());
        assert_eq!(
            validate_name(&format!("{deep}/"), 128),
            Err(TopicError::TooManyLevels)
        );
        assert_eq!(
            validate_filter(&format!("{deep}/#"), 128),
            Err(TopicError::TooManyLevels)
        );
        assert_eq!(
            parse_filter(&format!("$share/g/{deep}/x"), 128),
            Err(TopicError::TooManyLevels)
        );
    }

    #[test]
    fn names_with_wildcards_are_refused() {
        assert_eq!(validate_name_t("a/+/b"), Err(TopicError::WildcardInName));
        assert_eq!(validate_name_t("a/#"), Err(TopicError::WildcardInName));
        assert_eq!(validate_name_t(""), Err(TopicError::Empty));
        assert!(validate_name_t("a//b/").is_ok());
        assert!(validate_name_t("/").is_ok());
        assert!(validate_name_t("$SYS/x").is_ok());
    }

    #[test]
    fn filters_place_wildcards_alone_in_a_level() {
        for ok in [
            "#", "+", "a/#", "+/+", "a/+/b", "/+", "+/", "a//#", "$SYS/#",
        ] {
            assert!(validate_filter(ok, 128).is_ok(), "{ok}");
        }
        for bad in ["a#", "a/#/b", "a+", "a/b+/c", "#/a", "++", "a/##"] {
            assert_eq!(
                validate_filter(bad, 128),
                Err(TopicError::MisplacedWildcard),
                "{bad}"
            );
        }
        assert_eq!(validate_filter("", 128), Err(TopicError::Empty));
    }

    #[test]
    fn shared_filters_name_group_and_filter() {
        let p = parse_filter("$share/g1/sensors/+/t", 128).unwrap();
        assert_eq!(p.group, Some("g1"));
        assert_eq!(p.filter, "sensors/+/t");
        assert_eq!(parse_filter("a/b", 128).unwrap().group, None);
        for bad in [
            "$share/g",
            "$share//a",
            "$share/g+/a",
            "$share/g/",
            "$share",
            "$share/g/a#",
        ] {
            assert!(parse_filter(bad, 128).is_err(), "{bad}");
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
