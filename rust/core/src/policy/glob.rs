//! `*` and `?` globs over attribute values (names, not paths), matched without allocating.

/// A compiled glob: the literal parts between `*`s, in which `?` matches any one character.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Glob {
    parts: Vec<String>,
}

impl Glob {
    pub fn new(pattern: &str) -> Self {
        Self {
            parts: pattern.split('*').map(str::to_owned).collect(),
        }
    }

    pub fn matches(&self, value: &str) -> bool {
        let (first, rest) = match self.parts.split_first() {
            Some(split) => split,
            None => return value.is_empty(),
        };
        let Some(mut at) = part_at(first, value, 0) else {
            return false;
        };
        let Some((last, middle)) = rest.split_last() else {
            return at == value.len(); // no `*`: the whole value is the one part
        };
        // The last part must end the value; find where it would have to start.
        let last_chars = last.chars().count();
        let last_start = if last_chars == 0 {
            value.len()
        } else {
            match value.char_indices().rev().nth(last_chars - 1) {
                Some((i, _)) => i,
                None => return false,
            }
        };
        if last_start < at || part_at(last, value, last_start) != Some(value.len()) {
            return false;
        }
        // Middle parts in order, each at its leftmost place: leftmost is always safe for `*`.
        for part in middle {
            let found = value[at..last_start]
                .char_indices()
                .map(|(i, _)| at + i)
                .chain(std::iter::once(last_start))
                .find_map(|start| part_at(part, &value[..last_start], start));
            match found {
                Some(end) => at = end,
                None => return false,
            }
        }
        true
    }
}

/// If `part` matches `text` starting at byte `at`, the byte where the match ends.
fn part_at(part: &str, text: &str, at: usize) -> Option<usize> {
    let mut rest = text.get(at..)?.char_indices();
    let mut end = at;
    for p in part.chars() {
        let (i, t) = rest.next()?;
        if p != '?' && p != t {
            return None;
        }
        end = at + i + t.len_utf8();
    }
    Some(end)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs() {
        let cases = [
            ("gpt-4*", "gpt-4o-mini", true),
            ("gpt-4*", "gpt-3.5", false),
            ("*-mini", "gpt-4o-mini", true),
            ("*-mini", "gpt-4o", false),
            ("gpt-?o", "gpt-4o", true),
            ("gpt-?o", "gpt-40o", false),
            ("*", "", true),
            ("*", "anything", true),
            ("", "", true),
            ("", "x", false),
            ("a*b*c", "abc", true),
            ("a*b*c", "aXbYc", true),
            ("a*b*c", "aXcYb", false),
            ("a*a", "a", false),
            ("a*a", "aa", true),
            ("claude-*-sonnet*", "claude-3-5-sonnet-20241022", true),
            ("é?*", "éü", true),
            ("?", "ü", true),
            ("??", "ü", false),
            ("team-*", "team-", true),
        ];
        for (pattern, value, expected) in cases {
            assert_eq!(
                Glob::new(pattern).matches(value),
                expected,
                "{pattern} vs {value}"
            );
        }
    }
}
