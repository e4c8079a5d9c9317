//! Shell-style patterns for pool selections (`vm-*`, `db-??`, `[a-c]*`).
//! Only `*`, `?` and bracket classes (with ranges and a leading `!`) are
//! special; image names never contain `/`, so there is no path logic.

/// A validated pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Glob(String);

impl Glob {
    pub fn new(pattern: &str) -> Result<Glob, String> {
        if pattern.is_empty() {
            return Err("empty pattern".into());
        }
        let mut chars = pattern.chars();
        while let Some(c) = chars.next() {
            if c == '[' && !chars.by_ref().skip(1).any(|c| c == ']') {
                return Err(format!("{pattern:?}: unclosed '['"));
            }
        }
        Ok(Glob(pattern.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn matches(&self, name: &str) -> bool {
        let p: Vec<char> = self.0.chars().collect();
        let n: Vec<char> = name.chars().collect();
        matches_at(&p, &n)
    }
}

fn matches_at(p: &[char], n: &[char]) -> bool {
    // Iterative matcher with one backtrack point for the last `*`.
    let (mut pi, mut ni) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ni < n.len() {
        if pi < p.len() && p[pi] == '*' {
            star = Some((pi, ni));
            pi += 1;
            continue;
        }
        if pi < p.len() {
            if let Some(len) = match_one(&p[pi..], n[ni]) {
                pi += len;
                ni += 1;
                continue;
            }
        }
        match star {
            Some((sp, sn)) => {
                pi = sp + 1;
                ni = sn + 1;
                star = Some((sp, sn + 1));
            }
            None => return false,
        }
    }
    p[pi..].iter().all(|&c| c == '*')
}

/// Matches one pattern element against `c`; returns the element's length.
fn match_one(p: &[char], c: char) -> Option<usize> {
    match p[0] {
        '?' => Some(1),
        '[' => {
            let close = p.iter().skip(2).position(|&x| x == ']')? + 2;
            let (negate, set) = match p[1] {
                '!' => (true, &p[2..close]),
                _ => (false, &p[1..close]),
            };
            let mut hit = false;
            let mut i = 0;
            while i < set.len() {
                if i + 2 < set.len() && set[i + 1] == '-' {
                    hit |= set[i] <= c && c <= set[i + 2];
                    i += 3;
                } else {
                    hit |= set[i] == c;
                    i += 1;
                }
            }
            (hit != negate).then_some(close + 1)
        }
        x => (x == c).then_some(1),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(p: &str, n: &str) -> bool {
        Glob::new(p).unwrap().matches(n)
    }

    #[test]
    fn patterns() {
        assert!(m("*", "anything"));
        assert!(m("vm-*", "vm-1"));
        assert!(!m("vm-*", "db-1"));
        assert!(m("*-tmp", "vm-1-tmp"));
        assert!(m("a*b*c", "axxbyyc"));
        assert!(!m("a*b*c", "axxbyy"));
        assert!(m("db-??", "db-01"));
        assert!(!m("db-??", "db-1"));
        assert!(m("[a-c]*", "beta"));
        assert!(!m("[a-c]*", "delta"));
        assert!(m("[!a-c]*", "delta"));
        assert!(m("x[]]y", "x]y"));
        assert!(Glob::new("vm-[").is_err());
        assert!(Glob::new("").is_err());
    }
}
