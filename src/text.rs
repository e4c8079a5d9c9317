//! Cutting strings for display. Ids, times and names shown in tables come
//! from files a damaged or crafted archive controls, so a cut must land on
//! a character boundary and never panic, whatever the bytes say. What
//! other programs say about guest data (a checker naming a guest's files)
//! is shown through [`printable`], so it can neither drive the operator's
//! terminal nor fill a monitoring line.

/// At most the first `n` characters of `s`.
pub fn prefix(s: &str, n: usize) -> &str {
    match s.char_indices().nth(n) {
        Some((at, _)) => &s[..at],
        None => s,
    }
}

/// `s` with every control character (and every character that reorders
/// or hides text: bidirectional overrides, zero-width marks) escaped as
/// `\u{..}`, cut to at most `max` characters with a trailing `…`.
pub fn printable(s: &str, max: usize) -> String {
    let mut out = String::new();
    let mut chars = 0;
    for c in s.chars() {
        let hidden = c.is_control()
            || matches!(c, '\u{200b}'..='\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}' | '\u{feff}');
        let piece = if hidden {
            format!("\\u{{{:x}}}", c as u32)
        } else {
            c.to_string()
        };
        chars += piece.chars().count();
        if chars > max {
            out.push('…');
            break;
        }
        out.push_str(&piece);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::{prefix, printable};

    #[test]
    fn guest_text_cannot_drive_a_terminal() {
        assert_eq!(printable("plain text é", 80), "plain text é");
        assert_eq!(
            printable("a\x1b]0;owned\x07b\rc\u{202e}d", 80),
            "a\\u{1b}]0;owned\\u{7}b\\u{d}c\\u{202e}d"
        );
        assert_eq!(printable("0123456789", 4), "0123…");
        assert_eq!(printable("\x1b\x1b", 7), "\\u{1b}…");
        assert!(!printable(&"\x1b[2J".repeat(1000), 200).contains('\x1b'));
    }

    #[test]
    fn cuts_on_character_boundaries() {
        assert_eq!(prefix("0123456789abcdef", 12), "0123456789ab");
        assert_eq!(prefix("abc", 12), "abc");
        assert_eq!(prefix("", 3), "");
        assert_eq!(prefix("2026-11-2é-01T00:00:00Z", 10), "2026-11-2é");
        assert_eq!(prefix("ééééé", 2), "éé");
    }
}
