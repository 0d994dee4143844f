//! Relations between MQTT topic filters, as pure functions: does a filter match a topic, does
//! one filter cover another (every topic the second matches, the first matches too), do two
//! filters intersect (some topic matches both).
//!
//! Topics whose first level starts with `$` (like `$SYS/uptime`) are not matched by a filter
//! whose first level is `+` or `#`, as in MQTT subscription matching [MQTT-4.7.2-1].
//!
//! The relations range over every sequence of levels, the empty topic (one empty level)
//! included although MQTT forbids it as a topic name. That only makes them more cautious: `+`
//! and `/#` intersect (in the empty topic), and `/+/#` does not cover `/#`.

/// One level of a filter as the relations see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Level<'a> {
    /// Matches exactly this level.
    Lit(&'a str),
    /// `+`: any one level, except a `$` level in first position.
    Plus,
    /// `#`: this and all following levels, including none; not `$` topics in first position.
    Hash,
    /// Any one level, `$` levels in first position too. Only ACL rules produce it (an
    /// anonymous client's `%u` in a deny pattern), never a parsed filter.
    Any,
}

/// The levels of a filter (or of a topic, which has no wildcards).
pub(crate) fn levels(filter: &str) -> impl Iterator<Item = Level<'_>> + Clone {
    filter.split('/').map(|level| match level {
        "+" => Level::Plus,
        "#" => Level::Hash,
        other => Level::Lit(other),
    })
}

/// Why a filter is invalid, or `None` when it is a valid MQTT topic filter: not empty, at most
/// 65 535 bytes, no NUL, `+` and `#` only as whole levels, `#` only as the last level.
pub(crate) fn filter_problem(filter: &str) -> Option<&'static str> {
    if filter.is_empty() {
        return Some("empty topic filter");
    }
    if filter.len() > usize::from(u16::MAX) {
        return Some("topic filter longer than 65535 bytes");
    }
    if filter.contains('\0') {
        return Some("topic filter contains NUL");
    }
    let mut levels = filter.split('/').peekable();
    while let Some(level) = levels.next() {
        if level.contains('#') && (level != "#" || levels.peek().is_some()) {
            return Some("'#' must be a whole level and the last one");
        }
        if level.contains('+') && level != "+" {
            return Some("'+' must be a whole level");
        }
    }
    None
}

/// Whether `filter` is a valid MQTT topic filter (wildcards allowed).
pub fn is_valid_filter(filter: &str) -> bool {
    filter_problem(filter).is_none()
}

/// Whether `filter` matches the topic name `topic`. `filter` must be valid; `topic` is taken
/// as a topic name (a `+` or `#` in it is an ordinary character).
pub fn matches(filter: &str, topic: &str) -> bool {
    covers_levels(levels(filter), topic.split('/').map(Level::Lit))
}

/// Whether every topic matched by `filter` is matched by `rule` (both valid filters).
///
/// `sensors/#` covers `sensors/+/temp`, `sensors/#` and `sensors`; `sensors/+` does not cover
/// `sensors/#`; `#` does not cover `$SYS/#`.
pub fn covers(rule: &str, filter: &str) -> bool {
    covers_levels(levels(rule), levels(filter))
}

/// Whether some topic is matched by both `a` and `b` (both valid filters).
pub fn intersects(a: &str, b: &str) -> bool {
    intersects_levels(levels(a), levels(b))
}

/// Whether a `Lit` first level is a `$` level that first-position wildcards skip.
fn is_dollar(level: &str) -> bool {
    level.starts_with('$')
}

/// [`covers`] on levels. `rule` may hold [`Level::Any`]; `sub` is a filter or a topic.
pub(crate) fn covers_levels<'r, 's>(
    mut rule: impl Iterator<Item = Level<'r>>,
    mut sub: impl Iterator<Item = Level<'s>>,
) -> bool {
    let mut first = true;
    loop {
        match (rule.next(), sub.next()) {
            (None, None) => return true,
            // `#` takes whatever is left, zero levels included; in first position it cannot
            // take a `$` level (nor `Any`, which includes them).
            (Some(Level::Hash), s) => {
                let dollar =
                    matches!(s, Some(Level::Lit(l)) if is_dollar(l)) || s == Some(Level::Any);
                return !(first && dollar);
            }
            // The rule is longer (and not by a trailing `#`), or the filter is: the filter
            // matches a topic the rule does not.
            (None, Some(_)) | (Some(_), None) => return false,
            // A first-position `#` matches every topic (of one or more levels) that does not
            // start with `$`, which is exactly what `+/#` matches.
            (Some(Level::Plus | Level::Any), Some(Level::Hash)) if first => {
                return rule.next() == Some(Level::Hash);
            }
            (Some(r), Some(s)) => {
                let ok = match (r, s) {
                    (_, Level::Hash) => false,
                    (Level::Any, _) => true,
                    (Level::Plus, Level::Plus) => true,
                    (Level::Plus, Level::Lit(l)) => !(first && is_dollar(l)),
                    (Level::Plus, Level::Any) => !first,
                    (Level::Lit(a), Level::Lit(b)) => a == b,
                    (Level::Lit(_), Level::Plus | Level::Any) => false,
                    (Level::Hash, _) => true, // handled above
                };
                if !ok {
                    return false;
                }
            }
        }
        first = false;
    }
}

/// [`intersects`] on levels; either side may hold [`Level::Any`].
pub(crate) fn intersects_levels<'a, 'b>(
    mut a: impl Iterator<Item = Level<'a>>,
    mut b: impl Iterator<Item = Level<'b>>,
) -> bool {
    let mut first = true;
    loop {
        match (a.next(), b.next()) {
            (None, None) => return true,
            // `#` matches any continuation of the other side; in first position the shared
            // topic must not start with a `$` level, so the other side must allow one without.
            (Some(Level::Hash), other) | (other, Some(Level::Hash)) => {
                return !(first && matches!(other, Some(Level::Lit(l)) if is_dollar(l)));
            }
            (None, Some(_)) | (Some(_), None) => return false,
            (Some(x), Some(y)) => {
                let ok = match (x, y) {
                    (Level::Lit(p), Level::Lit(q)) => p == q,
                    (Level::Lit(l), Level::Plus) | (Level::Plus, Level::Lit(l)) => {
                        !(first && is_dollar(l))
                    }
                    // Two wildcards share a non-`$` level; `Any` takes any literal.
                    _ => true,
                };
                if !ok {
                    return false;
                }
            }
        }
        first = false;
    }
}

#[cfg(test)]
mod tests;
