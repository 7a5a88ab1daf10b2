//! The compiled policy matcher: which policies apply to a request.
//!
//! A policy's *selector* is a list of conditions that must all hold (an empty selector matches
//! every request). A condition tests one request attribute with one operator, optionally
//! negated:
//!
//! | attribute | operators |
//! |---|---|
//! | `key`, `team`, `user`, `model` (as requested), `resolved_model`, `provider`, `endpoint` | `exact`, `one_of`, `glob` |
//! | `tag` (holds if any of the request's tags matches) | `exact`, `one_of`, `glob` |
//! | `ip` (the client address) | `cidr` (one or more networks) |
//! | `param:<name>` (a numeric request parameter such as `param:max_tokens`) | `<`, `<=`, `>`, `>=`, `==`, `!=` |
//!
//! Globs know `*` (any run of characters, including none) and `?` (one character); there are
//! no character classes and no path separators: attribute values are names, not paths.
//!
//! Absent values: a condition on an attribute the request does not have (no user, no client IP,
//! no such parameter) does not hold, and so its negation does hold. `tag` with no tags holds
//! for nothing.
//!
//! # Index
//! [`PolicySet::new`] compiles the selectors once. Every policy that has a non-negated `exact`
//! or `one_of` condition on a string attribute is filed under each of that condition's values
//! (one condition per policy: the one with the fewest values); the others are kept in a short
//! list checked for every request. Per request, the matcher looks up each of the request's
//! attribute values (one hash lookup each, tags included), checks only those candidates'
//! remaining conditions, and returns the matching policy indices in ascending order (the order
//! of the configuration), so results are deterministic.

mod glob;

use std::collections::HashMap as StdHashMap;

/// The index's maps: aHash with random keys (request values are looked up in them; SipHash,
/// std's default, cost as much as the rest of matching).
type HashMap<K, V> = StdHashMap<K, V, ahash::RandomState>;
use std::net::IpAddr;

use ipnet::IpNet;

pub use glob::Glob;

/// Errors found while compiling selectors; each names the policy and condition.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PolicyError {
    #[error("policy {policy}, condition {condition}: unknown attribute `{attribute}`")]
    UnknownAttribute {
        policy: usize,
        condition: usize,
        attribute: String,
    },
    #[error("policy {policy}, condition {condition}: operator `{operator}` does not apply to `{attribute}`")]
    BadOperator {
        policy: usize,
        condition: usize,
        attribute: String,
        operator: String,
    },
    #[error("policy {policy}, condition {condition}: invalid network `{value}` (expected CIDR like `10.0.0.0/8`)")]
    BadNetwork {
        policy: usize,
        condition: usize,
        value: String,
    },
    #[error("policy {policy}, condition {condition}: {message}")]
    BadValue {
        policy: usize,
        condition: usize,
        message: String,
    },
}

/// The string attributes of a request, in the order of [`Request::strings`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Attr {
    Key = 0,
    Team = 1,
    User = 2,
    Model = 3,
    ResolvedModel = 4,
    Provider = 5,
    Endpoint = 6,
}

const STRING_ATTRS: usize = 7;

impl Attr {
    fn parse(name: &str) -> Option<Attr> {
        Some(match name {
            "key" => Attr::Key,
            "team" => Attr::Team,
            "user" => Attr::User,
            "model" => Attr::Model,
            "resolved_model" => Attr::ResolvedModel,
            "provider" => Attr::Provider,
            "endpoint" => Attr::Endpoint,
            _ => return None,
        })
    }
}

/// A numeric comparison.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cmp {
    Lt,
    Le,
    Gt,
    Ge,
    Eq,
    Ne,
}

impl Cmp {
    fn parse(op: &str) -> Option<Cmp> {
        Some(match op {
            "<" => Cmp::Lt,
            "<=" => Cmp::Le,
            ">" => Cmp::Gt,
            ">=" => Cmp::Ge,
            "==" => Cmp::Eq,
            "!=" => Cmp::Ne,
            _ => return None,
        })
    }

    fn holds(self, left: f64, right: f64) -> bool {
        match self {
            Cmp::Lt => left < right,
            Cmp::Le => left <= right,
            Cmp::Gt => left > right,
            Cmp::Ge => left >= right,
            Cmp::Eq => left == right,
            Cmp::Ne => left != right,
        }
    }
}

/// A condition's value, as configuration gives it.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Str(String),
    List(Vec<String>),
    Num(f64),
}

/// One condition before compilation: `attribute operator value`, maybe negated.
#[derive(Debug, Clone, PartialEq)]
pub struct Condition {
    pub attribute: String,
    pub operator: String,
    pub value: Value,
    pub negate: bool,
}

impl Condition {
    /// A condition that is not negated.
    pub fn new(attribute: &str, operator: &str, value: Value) -> Self {
        Self {
            attribute: attribute.into(),
            operator: operator.into(),
            value,
            negate: false,
        }
    }
}

#[derive(Debug, Clone)]
enum Strings {
    Exact(String),
    OneOf(Vec<String>),
    Glob(Glob),
}

impl Strings {
    fn matches(&self, value: &str) -> bool {
        match self {
            Strings::Exact(s) => s == value,
            Strings::OneOf(list) => list.iter().any(|s| s == value),
            Strings::Glob(g) => g.matches(value),
        }
    }

    fn index_values(&self) -> Option<&[String]> {
        match self {
            Strings::Exact(s) => Some(std::slice::from_ref(s)),
            Strings::OneOf(list) => Some(list),
            Strings::Glob(_) => None,
        }
    }
}

#[derive(Debug, Clone)]
enum Test {
    Attr(Attr, Strings),
    Tag(Strings),
    Ip(Vec<IpNet>),
    Param(usize, Cmp, f64),
}

#[derive(Debug, Clone)]
struct Compiled {
    test: Test,
    negate: bool,
}

/// Where an indexed policy is filed: an attribute slot (`0..7`) or the tag slot (7).
const TAG_SLOT: usize = STRING_ATTRS;

/// One request's attributes, as primitives.
#[derive(Debug, Clone, Default)]
pub struct Request<'a> {
    /// Indexed by [`Attr`]: key, team, user, model, resolved_model, provider, endpoint.
    pub strings: [Option<&'a str>; STRING_ATTRS],
    pub tags: &'a [&'a str],
    pub ip: Option<IpAddr>,
    /// Values of [`PolicySet::params`], in that order.
    pub params: &'a [Option<f64>],
}

/// Compiled selectors of every policy.
#[derive(Debug, Clone)]
pub struct PolicySet {
    policies: Vec<Vec<Compiled>>,
    /// For each slot (7 string attributes, then tags): value -> policies filed under it, with
    /// the position of the condition that filed them (already satisfied by the lookup).
    index: Vec<HashMap<String, Vec<(u32, u32)>>>,
    unindexed: Vec<u32>,
    params: Vec<String>,
}

impl PolicySet {
    /// Compile the selectors of every policy (policy `i` is `selectors[i]`).
    pub fn new(selectors: &[Vec<Condition>]) -> Result<Self, PolicyError> {
        let mut params: Vec<String> = Vec::new();
        let mut policies = Vec::with_capacity(selectors.len());
        let mut index: Vec<HashMap<String, Vec<(u32, u32)>>> =
            vec![HashMap::default(); STRING_ATTRS + 1];
        let mut unindexed = Vec::new();
        for (p, selector) in selectors.iter().enumerate() {
            let mut compiled = Vec::with_capacity(selector.len());
            for (c, condition) in selector.iter().enumerate() {
                compiled.push(compile(p, c, condition, &mut params)?);
            }
            // File under the indexable condition with the fewest values.
            let best = compiled
                .iter()
                .enumerate()
                .filter(|(_, cond)| !cond.negate)
                .filter_map(|(c, cond)| match &cond.test {
                    Test::Attr(attr, strings) => {
                        strings.index_values().map(|v| (c, *attr as usize, v))
                    }
                    Test::Tag(strings) => strings.index_values().map(|v| (c, TAG_SLOT, v)),
                    Test::Ip(_) | Test::Param(..) => None,
                })
                .min_by_key(|(_, _, values)| values.len());
            match best {
                Some((c, slot, values)) => {
                    for value in values {
                        index[slot]
                            .entry(value.clone())
                            .or_default()
                            .push((p as u32, c as u32));
                    }
                }
                None => unindexed.push(p as u32),
            }
            policies.push(compiled);
        }
        Ok(Self {
            policies,
            index,
            unindexed,
            params,
        })
    }

    /// Number of policies.
    pub fn len(&self) -> usize {
        self.policies.len()
    }

    pub fn is_empty(&self) -> bool {
        self.policies.is_empty()
    }

    /// The numeric parameters the selectors use, in the order [`Request::params`] takes them.
    pub fn params(&self) -> &[String] {
        &self.params
    }

    /// Indices of every policy whose selector matches, ascending.
    pub fn matches(&self, request: &Request<'_>) -> Vec<u32> {
        let mut out = Vec::new();
        self.matches_into(request, &mut out);
        out
    }

    /// As [`PolicySet::matches`], into a reused buffer.
    pub fn matches_into(&self, request: &Request<'_>, out: &mut Vec<u32>) {
        out.clear();
        for &p in &self.unindexed {
            if self.holds(p, u32::MAX, request) {
                out.push(p);
            }
        }
        for (slot, value) in request.strings.iter().enumerate() {
            if let Some(value) = value {
                self.lookup(slot, value, request, out);
            }
        }
        for tag in request.tags {
            self.lookup(TAG_SLOT, tag, request, out);
        }
        out.sort_unstable();
        // A policy filed under a `one_of` of tags can be reached by two of the request's tags.
        out.dedup();
    }

    fn lookup(&self, slot: usize, value: &str, request: &Request<'_>, out: &mut Vec<u32>) {
        if let Some(candidates) = self.index[slot].get(value) {
            for &(p, c) in candidates {
                if self.holds(p, c, request) {
                    out.push(p);
                }
            }
        }
    }

    /// Whether every condition of policy `p` holds, except condition `skip` (already known).
    fn holds(&self, p: u32, skip: u32, request: &Request<'_>) -> bool {
        self.policies[p as usize]
            .iter()
            .enumerate()
            .filter(|(c, _)| *c as u32 != skip)
            .all(|(_, cond)| evaluate(cond, request))
    }
}

fn evaluate(cond: &Compiled, request: &Request<'_>) -> bool {
    let found = match &cond.test {
        Test::Attr(attr, strings) => {
            request.strings[*attr as usize].is_some_and(|v| strings.matches(v))
        }
        Test::Tag(strings) => request.tags.iter().any(|t| strings.matches(t)),
        Test::Ip(nets) => request
            .ip
            .is_some_and(|ip| nets.iter().any(|n| n.contains(&ip))),
        Test::Param(i, cmp, right) => request
            .params
            .get(*i)
            .copied()
            .flatten()
            .is_some_and(|left| cmp.holds(left, *right)),
    };
    found != cond.negate
}

fn compile(
    p: usize,
    c: usize,
    cond: &Condition,
    params: &mut Vec<String>,
) -> Result<Compiled, PolicyError> {
    let bad_operator = || PolicyError::BadOperator {
        policy: p,
        condition: c,
        attribute: cond.attribute.clone(),
        operator: cond.operator.clone(),
    };
    let bad_value = |message: &str| PolicyError::BadValue {
        policy: p,
        condition: c,
        message: format!("`{}` `{}` {message}", cond.attribute, cond.operator),
    };
    let strings = || -> Result<Strings, PolicyError> {
        match (cond.operator.as_str(), &cond.value) {
            ("exact", Value::Str(s)) => Ok(Strings::Exact(s.clone())),
            ("one_of", Value::List(list)) => Ok(Strings::OneOf(list.clone())),
            ("glob", Value::Str(s)) => Ok(Strings::Glob(Glob::new(s))),
            ("exact" | "glob", _) => Err(bad_value("takes a string")),
            ("one_of", _) => Err(bad_value("takes a list of strings")),
            _ => Err(bad_operator()),
        }
    };
    let test = if let Some(attr) = Attr::parse(&cond.attribute) {
        Test::Attr(attr, strings()?)
    } else if cond.attribute == "tag" {
        Test::Tag(strings()?)
    } else if cond.attribute == "ip" {
        if cond.operator != "cidr" {
            return Err(bad_operator());
        }
        let texts: Vec<&String> = match &cond.value {
            Value::Str(s) => vec![s],
            Value::List(list) => list.iter().collect(),
            Value::Num(_) => return Err(bad_value("takes a network or a list of networks")),
        };
        let mut nets = Vec::with_capacity(texts.len());
        for text in texts {
            let net = text
                .parse::<IpNet>()
                .or_else(|_| text.parse::<IpAddr>().map(IpNet::from))
                .map_err(|_| PolicyError::BadNetwork {
                    policy: p,
                    condition: c,
                    value: text.clone(),
                })?;
            nets.push(net.trunc());
        }
        Test::Ip(nets)
    } else if let Some(name) = cond.attribute.strip_prefix("param:") {
        let cmp = Cmp::parse(&cond.operator).ok_or_else(bad_operator)?;
        let Value::Num(right) = cond.value else {
            return Err(bad_value("takes a number"));
        };
        let i = match params.iter().position(|n| n == name) {
            Some(i) => i,
            None => {
                params.push(name.to_owned());
                params.len() - 1
            }
        };
        Test::Param(i, cmp, right)
    } else {
        return Err(PolicyError::UnknownAttribute {
            policy: p,
            condition: c,
            attribute: cond.attribute.clone(),
        });
    };
    Ok(Compiled {
        test,
        negate: cond.negate,
    })
}

#[cfg(test)]
mod tests;
