//! Text another party wrote (a daemon's error message, a Bitcoin peer's user agent), made
//! safe to show: its control characters escaped (`\u{1b}`, `\r`, ...), so it can neither
//! drive the terminal it is printed on nor forge a line of the log it is written to.
//!
//! It lives here because the tenant CLI and the P2P client both link this crate and no
//! lower one; what each must keep differs, hence two functions over one loop.

/// `text` with every control character escaped, `\n` and `\t` too: for a log line, which a
/// newline would split into a second line the other party wrote (the log formatter does
/// not escape newlines).
pub fn printable(text: &str) -> String {
    escape_controls(text, |_| false)
}

/// `text` with every control character but newline and tab escaped: for a terminal, where
/// lines and columns are the text's own layout but an escape sequence could rewrite what
/// the user sees or set the window's title.
pub fn printable_lines(text: &str) -> String {
    escape_controls(text, |c| c == '\n' || c == '\t')
}

/// `text` with each control character that `keep` refuses escaped as `char::escape_default`
/// writes it (`\n`, `\u{1b}`).
fn escape_controls(text: &str, keep: impl Fn(char) -> bool) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if c.is_control() && !keep(c) {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = "a\nb\tc\r\u{1b}]0;t\u{7}é";

    #[test]
    fn printable_escapes_every_control_character() {
        assert_eq!(printable(TEXT), "a\\nb\\tc\\r\\u{1b}]0;t\\u{7}é");
    }

    #[test]
    fn printable_lines_keeps_newline_and_tab_only() {
        assert_eq!(printable_lines(TEXT), "a\nb\tc\\r\\u{1b}]0;t\\u{7}é");
    }
}
