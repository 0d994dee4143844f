//! Mosquitto-style ACL files and the checks the broker makes with them.
//!
//! # File format
//!
//! One rule per line; leading and trailing whitespace is ignored, as are blank lines and lines
//! starting with `#`.
//!
//! - `user NAME`: the following `topic` lines apply to `NAME` (the rest of the line, inner
//!   spaces included). A user may have several sections; their rules add up.
//! - `topic [read|write|readwrite|deny] FILTER`: a rule for a topic filter (the rest of the
//!   line, inner spaces included). Without an access type it is `readwrite`.
//! - `pattern [read|write|readwrite|deny] FILTER`: the same, for every client, with a level
//!   that is exactly `%c` standing for the client id and one that is exactly `%u` for the
//!   username (Mosquitto 2 substitutes whole levels only; `dev-%c` is literal).
//!
//! # Who gets which rules
//!
//! - `topic` rules before the first `user` line: every client, anonymous or not.
//! - `topic` rules after `user NAME`: clients authenticated as `NAME`.
//! - `pattern` rules: every client, wherever they appear in the file. A `%u` allow pattern does
//!   not apply to anonymous clients; a `%u` deny pattern does, with `%u` matching any level (so
//!   an anonymous client never gets through a gap meant to be closed for every user).
//! - A substituted value that could widen a rule (one that is empty, contains `+`, `#` or `/`,
//!   or starts with `$` in first position, where it would reach `$SYS`) makes an allow pattern
//!   not apply and a deny pattern match every topic.
//!
//! Deny wins: if any applicable deny rule matches, access is denied, whatever allows it.
//! Topics starting with `$` are not matched by a rule starting with `+` or `#`.
//!
//! # Where Mosquitto 2.0 differs
//!
//! - Mosquitto gives the rules before the first `user` line to anonymous clients only.
//! - Mosquitto does not check SUBSCRIBE against its ACL file (it filters at delivery); here
//!   [`Acl::check_subscribe`] refuses a subscription that no read rule covers.
//! - In Mosquitto, an allowing `topic` rule of the user ends the check before `pattern` deny
//!   rules are looked at; here every applicable deny rule is consulted first.
//! - Mosquitto denies everything to a client whose username or client id contains `+` or `#`
//!   when patterns exist; here only the pattern rules that would substitute it are affected.
//!   Mosquitto skips `%u` deny patterns for anonymous clients.
//! - Mosquitto reads `topic read` (no filter) as the filter `read`, rejects `topic foo bar`
//!   (unknown access type) and ignores unknown keywords; here the first two are errors, the
//!   second because a mistyped access type (`topic dney secret/#`) must not silently turn a
//!   deny into an allow of an odd filter. A filter with spaces needs an explicit access type.
//!   Unknown keywords are errors too.
//!
//! When no ACL is configured at all the broker allows everything: that is its business, not
//! this module's.

use std::fmt;

use indexmap::IndexMap;

mod filter;

use filter::{Level, covers_levels, filter_problem, intersects_levels, levels};
pub use filter::{covers, intersects, is_valid_filter, matches};

/// An error in an ACL file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AclFileError {
    /// 1-based line number.
    pub line: usize,
    /// What is wrong.
    pub message: String,
}

impl fmt::Display for AclFileError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "line {}: {}", self.line, self.message)
    }
}

impl std::error::Error for AclFileError {}

/// The client an access check is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Subject<'a> {
    /// The authenticated username; `None` for an anonymous client.
    pub username: Option<&'a str>,
    /// The client identifier (as assigned by the broker when the client sent none).
    pub client_id: &'a str,
}

/// The outcome of [`Acl::check_subscribe`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SubscribeDecision {
    /// No read rule covers the filter, or a deny rule covers it.
    Denied,
    /// A read rule covers the filter.
    Allowed {
        /// Some deny rule matches part of what the filter matches: check [`Acl::can_read`]
        /// for each message delivered through this subscription.
        check_each_message: bool,
    },
}

/// One level of a rule's filter.
#[derive(Debug, Clone, PartialEq, Eq)]
enum RuleLevel {
    Lit(Box<str>),
    Plus,
    Hash,
    /// `%c` in a `pattern` rule.
    ClientId,
    /// `%u` in a `pattern` rule.
    Username,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Rule {
    levels: Box<[RuleLevel]>,
    /// Whether any level is `%c` or `%u`: when not, the rule applies as it stands.
    substitutes: bool,
}

/// Rules split by what they decide, so that a check scans only the relevant ones.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct RuleSet {
    deny: Vec<Rule>,
    /// `read` and `readwrite` rules.
    read: Vec<Rule>,
    /// `write` and `readwrite` rules.
    write: Vec<Rule>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Access {
    Read,
    Write,
    ReadWrite,
    Deny,
}

impl RuleSet {
    fn push(&mut self, access: Access, rule: Rule) {
        match access {
            Access::Deny => self.deny.push(rule),
            Access::Read => self.read.push(rule),
            Access::Write => self.write.push(rule),
            Access::ReadWrite => {
                self.read.push(rule.clone());
                self.write.push(rule);
            }
        }
    }
}

/// How a rule applies to one subject.
enum Effect {
    /// Not at all (an allow pattern whose substitution is unsafe or missing).
    Skip,
    /// To every topic (a deny pattern whose substitution is unsafe).
    Everything,
    /// Through its levels, substituted.
    Levels,
}

impl Rule {
    fn effect(&self, who: &Subject<'_>, deny: bool) -> Effect {
        if !self.substitutes {
            return Effect::Levels;
        }
        let unsafe_effect = if deny {
            Effect::Everything
        } else {
            Effect::Skip
        };
        for (i, level) in self.levels.iter().enumerate() {
            let value = match level {
                RuleLevel::ClientId => who.client_id,
                RuleLevel::Username => match who.username {
                    Some(username) => username,
                    // Allow: does not apply. Deny: `%u` matches any level (see `levels`).
                    None if deny => continue,
                    None => return Effect::Skip,
                },
                _ => continue,
            };
            if !safe_substitution(value, i == 0) {
                return unsafe_effect;
            }
        }
        Effect::Levels
    }

    /// The levels with `%c` and `%u` replaced, without building a string.
    fn levels<'a>(&'a self, who: Subject<'a>) -> impl Iterator<Item = Level<'a>> {
        self.levels.iter().map(move |level| match level {
            RuleLevel::Lit(l) => Level::Lit(l),
            RuleLevel::Plus => Level::Plus,
            RuleLevel::Hash => Level::Hash,
            RuleLevel::ClientId => Level::Lit(who.client_id),
            RuleLevel::Username => who.username.map_or(Level::Any, Level::Lit),
        })
    }

    fn matches_topic(&self, who: Subject<'_>, topic: &str, deny: bool) -> bool {
        match self.effect(&who, deny) {
            Effect::Skip => false,
            Effect::Everything => true,
            Effect::Levels => covers_levels(self.levels(who), topic.split('/').map(Level::Lit)),
        }
    }
}

/// A value that, put in place of a whole level, cannot match more than the level it names.
fn safe_substitution(value: &str, first_level: bool) -> bool {
    let widening = value.is_empty()
        || value.contains(['+', '#', '/'])
        || (first_level && value.starts_with('$'));
    !widening
}

/// A parsed ACL file. See the [module documentation](self) for the rules.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Acl {
    /// `topic` rules before the first `user` line.
    global: RuleSet,
    /// `topic` rules per user, users in file order.
    users: IndexMap<String, RuleSet>,
    /// `pattern` rules.
    patterns: RuleSet,
}

impl Acl {
    /// Parses the text of an ACL file.
    pub fn parse(text: &str) -> Result<Acl, AclFileError> {
        let mut acl = Acl::default();
        let mut current_user: Option<String> = None;
        for (index, raw) in text.lines().enumerate() {
            let error = |message: String| AclFileError {
                line: index + 1,
                message,
            };
            let line = raw.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (keyword, rest) = split_word(line);
            match keyword {
                "user" => {
                    if rest.is_empty() {
                        return Err(error("`user` with no username".into()));
                    }
                    acl.users.entry(rest.to_owned()).or_default();
                    current_user = Some(rest.to_owned());
                }
                "topic" | "pattern" => {
                    let pattern = keyword == "pattern";
                    let (access, filter) = access_and_filter(keyword, rest).map_err(error)?;
                    if let Some(problem) = filter_problem(filter) {
                        return Err(error(format!("invalid topic filter: {problem}")));
                    }
                    let rule = parse_rule(filter, pattern);
                    let set = match (&current_user, pattern) {
                        (_, true) => &mut acl.patterns,
                        (None, false) => &mut acl.global,
                        (Some(user), false) => acl.users.entry(user.clone()).or_default(),
                    };
                    set.push(access, rule);
                }
                other => {
                    return Err(error(format!(
                        "unknown keyword `{}` (expected user, topic or pattern)",
                        truncate(other, 40)
                    )));
                }
            }
        }
        Ok(acl)
    }

    /// Whether `who` may publish to the topic name `topic`.
    ///
    /// A topic containing `+` or `#`, or an empty one, is never allowed.
    pub fn can_publish(&self, who: &Subject<'_>, topic: &str) -> bool {
        self.check_topic(who, topic, |set| &set.write)
    }

    /// Whether `who` may receive a message published to `topic`: delivery through a
    /// subscription, of a retained message, or of a will.
    pub fn can_read(&self, who: &Subject<'_>, topic: &str) -> bool {
        self.check_topic(who, topic, |set| &set.read)
    }

    /// Whether `who` may subscribe to `filter`; see [`SubscribeDecision`].
    ///
    /// Allowed only if a single applicable read rule [`covers`] the whole filter; denied if an
    /// applicable deny rule covers it; when a deny rule only [`intersects`] it, allowed with
    /// `check_each_message`. For a shared subscription (`$share/group/filter`) pass the filter
    /// without the `$share/group/` prefix. An invalid filter is denied.
    pub fn check_subscribe(&self, who: &Subject<'_>, filter: &str) -> SubscribeDecision {
        if !is_valid_filter(filter) {
            return SubscribeDecision::Denied;
        }
        let sets = self.sets(who);
        let mut partly_denied = false;
        for rule in sets.iter().flatten().flat_map(|set| &set.deny) {
            match rule.effect(who, true) {
                Effect::Skip => {}
                Effect::Everything => return SubscribeDecision::Denied,
                Effect::Levels => {
                    if covers_levels(rule.levels(*who), levels(filter)) {
                        return SubscribeDecision::Denied;
                    }
                    partly_denied =
                        partly_denied || intersects_levels(rule.levels(*who), levels(filter));
                }
            }
        }
        let allowed = sets.iter().flatten().flat_map(|set| &set.read).any(|rule| {
            matches!(rule.effect(who, false), Effect::Levels)
                && covers_levels(rule.levels(*who), levels(filter))
        });
        if allowed {
            SubscribeDecision::Allowed {
                check_each_message: partly_denied,
            }
        } else {
            SubscribeDecision::Denied
        }
    }

    /// Usernames with a `user` section, in file order (each once).
    pub fn users(&self) -> impl Iterator<Item = &str> {
        self.users.keys().map(String::as_str)
    }

    /// The rule sets that apply to `who`: global, the user's own, patterns.
    fn sets(&self, who: &Subject<'_>) -> [Option<&RuleSet>; 3] {
        let own = who.username.and_then(|username| self.users.get(username));
        [Some(&self.global), own, Some(&self.patterns)]
    }

    fn check_topic(
        &self,
        who: &Subject<'_>,
        topic: &str,
        allowing: impl Fn(&RuleSet) -> &[Rule],
    ) -> bool {
        if topic.is_empty() || topic.contains(['+', '#']) {
            return false;
        }
        let sets = self.sets(who);
        let denied = sets
            .iter()
            .flatten()
            .flat_map(|set| &set.deny)
            .any(|rule| rule.matches_topic(*who, topic, true));
        !denied
            && sets
                .iter()
                .flatten()
                .flat_map(|set| allowing(set))
                .any(|rule| rule.matches_topic(*who, topic, false))
    }
}

/// Splits off the first whitespace-separated word; the rest is trimmed.
fn split_word(s: &str) -> (&str, &str) {
    match s.split_once(char::is_whitespace) {
        Some((word, rest)) => (word, rest.trim()),
        None => (s, ""),
    }
}

/// The access type and filter of a `topic` or `pattern` line (after the keyword).
fn access_and_filter<'a>(keyword: &str, rest: &'a str) -> Result<(Access, &'a str), String> {
    if rest.is_empty() {
        return Err(format!("`{keyword}` with no topic filter"));
    }
    let (word, filter) = split_word(rest);
    let access = match word {
        "read" => Access::Read,
        "write" => Access::Write,
        "readwrite" => Access::ReadWrite,
        "deny" => Access::Deny,
        _ if filter.is_empty() => return Ok((Access::ReadWrite, rest)),
        _ => {
            return Err(format!(
                "`{}` is not an access type (read, write, readwrite or deny); a filter with \
                 spaces needs an explicit access type",
                truncate(word, 40)
            ));
        }
    };
    if filter.is_empty() {
        return Err(format!("`{keyword} {word}` with no topic filter"));
    }
    Ok((access, filter))
}

fn parse_rule(filter: &str, pattern: bool) -> Rule {
    let levels: Box<[RuleLevel]> = filter
        .split('/')
        .map(|level| match level {
            "+" => RuleLevel::Plus,
            "#" => RuleLevel::Hash,
            "%c" if pattern => RuleLevel::ClientId,
            "%u" if pattern => RuleLevel::Username,
            other => RuleLevel::Lit(other.into()),
        })
        .collect();
    let substitutes = levels
        .iter()
        .any(|l| matches!(l, RuleLevel::ClientId | RuleLevel::Username));
    Rule {
        levels,
        substitutes,
    }
}

/// At most `max` characters of `s`, for error messages.
fn truncate(s: &str, max: usize) -> &str {
    s.char_indices().nth(max).map_or(s, |(i, _)| &s[..i])
}

#[cfg(test)]
mod tests;
