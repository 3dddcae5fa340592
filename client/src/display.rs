//! What a peer wrote is shown, never executed. A text, a name or a file
//! title from the network reaches a terminal only through [`shown`]: control
//! characters become their visible pictures (ESC shows as `␛`), so no peer
//! can clear the screen, retitle the window or fake a line; bidi and other
//! invisible format characters show as `�`, so none can reorder what
//! follows them.

use std::borrow::Cow;

/// Whether `c` is an invisible formatting character that can reorder or
/// hide text: bidi embeddings, overrides and isolates, marks, zero-width
/// characters and the BOM.
pub fn is_format_control(c: char) -> bool {
    matches!(c,
        '\u{061C}' | '\u{180E}' | '\u{200B}'..='\u{200F}' | '\u{202A}'..='\u{202E}'
        | '\u{2060}'..='\u{2069}' | '\u{FEFF}')
}

/// `s` made safe to print: C0 controls and DEL as their visible pictures
/// (U+2400..), C1 controls and format characters as U+FFFD.
pub fn shown(s: &str) -> Cow<'_, str> {
    if !s.chars().any(|c| c.is_control() || is_format_control(c)) {
        return Cow::Borrowed(s);
    }
    Cow::Owned(
        s.chars()
            .map(|c| match c {
                '\u{0}'..='\u{1F}' => char::from_u32(0x2400 + c as u32).unwrap_or('\u{FFFD}'),
                '\u{7F}' => '\u{2421}',
                c if c.is_control() || is_format_control(c) => '\u{FFFD}',
                c => c,
            })
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn controls_and_bidi_are_shown_not_obeyed() {
        assert!(matches!(shown("plain text, ünïcode 👋"), Cow::Borrowed(_)));
        assert_eq!(
            shown("\u{1b}[2J\u{1b}]0;owned\u{7}\nfake"),
            "␛[2J␛]0;owned␇␊fake"
        );
        assert_eq!(shown("a\u{7f}b\u{9b}c"), "a␡b\u{FFFD}c");
        assert_eq!(shown("evil\u{202E}gpj.exe"), "evil\u{FFFD}gpj.exe");
        assert_eq!(shown("zero\u{200B}width"), "zero\u{FFFD}width");
    }
}
