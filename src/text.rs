//! Cutting strings for display. Ids, times and names shown in tables come
//! from files a damaged or crafted archive controls, so a cut must land on
//! a character boundary and never panic, whatever the bytes say.

/// At most the first `n` characters of `s`.
pub fn prefix(s: &str, n: usize) -> &str {
    match s.char_indices().nth(n) {
        Some((at, _)) => &s[..at],
        None => s,
    }
}

#[cfg(test)]
mod tests {
    use super::prefix;

    #[test]
    fn cuts_on_character_boundaries() {
        assert_eq!(prefix("0123456789abcdef", 12), "0123456789ab");
        assert_eq!(prefix("abc", 12), "abc");
        assert_eq!(prefix("", 3), "");
        assert_eq!(prefix("2026-11-2é-01T00:00:00Z", 10), "2026-11-2é");
        assert_eq!(prefix("ééééé", 2), "éé");
    }
}
