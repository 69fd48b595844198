//! What text may contain: no NUL, no C0 or C1 control characters (which a
//! terminal or log viewer may act on), except newline and tab in multi-line
//! free text.

use super::limits::Text;

/// Why a string was refused, in words for a field violation; `None` when
/// it is acceptable.
pub fn text_problem(s: &str, text: Text) -> Option<String> {
    // Most text is printable ASCII: checked without decoding characters
    // (every byte of a multi-byte character is ≥ 0x80, so a string of
    // bytes in 0x20..0x7F holds no control character).
    let lines = text == Text::Lines;
    if plain_ascii(s.as_bytes(), lines) {
        return None;
    }
    let allowed = |c: char| lines && matches!(c, '\n' | '\t');
    let (at, c) = s
        .chars()
        .enumerate()
        .find(|(_, c)| c.is_control() && !allowed(*c))?;
    let which = if c == '\0' {
        "a NUL character".to_string()
    } else {
        format!("control character U+{:04X}", u32::from(c))
    };
    let hint = if text == Text::Lines {
        "only newline and tab are allowed"
    } else {
        "control characters (newlines included) are not allowed"
    };
    Some(format!("{which} at character {at}: {hint}"))
}

/// Whether every byte is printable ASCII (0x20..0x7F), or a newline or a
/// tab where `lines`. Checked 32 bytes at a time with no early exit inside
/// a block, so that the compiler can use vector instructions: every field
/// of every request passes here (a byte-at-a-time loop was ~6 % of the
/// runtime workers' time publishing pipelined).
fn plain_ascii(bytes: &[u8], lines: bool) -> bool {
    let ok = |b: u8| (b.wrapping_sub(0x20) < 0x5f) | (lines & ((b == b'\n') | (b == b'\t')));
    let (blocks, rest) = bytes.as_chunks::<32>();
    blocks
        .iter()
        .all(|block| block.iter().fold(true, |all, &b| all & ok(b)))
        && rest.iter().all(|&b| ok(b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_by_kind() {
        let cases: &[(&str, Text, bool)] = &[
            ("plain text, café", Text::Line, true),
            ("two\nlines", Text::Lines, true),
            ("tab\there", Text::Lines, true),
            ("two\nlines", Text::Line, false),
            ("two\nlines", Text::Id, false),
            ("nul\0", Text::Lines, false),
            ("esc\u{1b}[2J", Text::Lines, false),
            ("cr\r", Text::Lines, false),
            ("del\u{7f}", Text::Line, false),
            ("c1\u{85}", Text::Lines, false),
            ("c1\u{9b}31m", Text::Line, false),
            ("", Text::Id, true),
            ("tab\there", Text::Line, false),
            ("tilde~", Text::Id, true),
            ("space ", Text::Id, true),
            ("us\u{1f}", Text::Line, false),
            ("café\n", Text::Lines, true),
            ("café\u{1}", Text::Lines, false),
        ];
        for (s, kind, ok) in cases {
            assert_eq!(text_problem(s, *kind).is_none(), *ok, "{s:?} as {kind:?}");
        }
    }

    #[test]
    fn the_block_check_agrees_with_a_byte_at_a_time_check() {
        // Every byte value, at every position around two 32-byte blocks,
        // in strings of every length up to three blocks.
        let naive = |bytes: &[u8], lines: bool| {
            bytes
                .iter()
                .all(|&b| (0x20..0x7f).contains(&b) || (lines && (b == b'\n' || b == b'\t')))
        };
        for len in 0..=96usize {
            let mut bytes = vec![b'a'; len];
            assert!(plain_ascii(&bytes, false) && plain_ascii(&bytes, true));
            for at in 0..len {
                for b in 0..=255u8 {
                    bytes[at] = b;
                    for lines in [false, true] {
                        assert_eq!(
                            plain_ascii(&bytes, lines),
                            naive(&bytes, lines),
                            "byte {b:#04x} at {at} of {len}, lines {lines}"
                        );
                    }
                }
                bytes[at] = b'a';
            }
        }
    }
}
