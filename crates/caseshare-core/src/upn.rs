//! Unique Pupil Number (UPN) validation: 13 characters, a check letter, then
//! a 3-digit LA code, 4-digit establishment, 2-digit year and 3-digit serial
//! (a temporary UPN ends in a letter).

const CHECK_LETTERS: &[u8; 23] = b"ABCDEFGHJKLMNPQRTUVWXYZ";

/// Why a UPN is invalid.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum UpnError {
    /// Not 13 characters of the right classes.
    #[error("a UPN is a check letter, 11 digits, and a final digit or letter")]
    Format,
    /// The check letter does not match.
    #[error("the UPN's check letter is wrong")]
    CheckLetter,
}

fn letter_value(c: u8) -> Option<u32> {
    CHECK_LETTERS
        .iter()
        .position(|&l| l == c)
        .and_then(|p| u32::try_from(p).ok())
}

/// Checks a UPN's format and check letter: the sum of value × position for
/// positions 2–13 (digits at face value, a final letter by its index in
/// `ABCDEFGHJKLMNPQRTUVWXYZ`), mod 23, indexes the check letter.
pub fn validate_upn(s: &str) -> Result<(), UpnError> {
    let b = s.as_bytes();
    if b.len() != 13 || !b[1..12].iter().all(u8::is_ascii_digit) {
        return Err(UpnError::Format);
    }
    let mut sum = 0u32;
    for (i, &c) in b.iter().enumerate().skip(1) {
        let position = u32::try_from(i + 1).map_err(|_| UpnError::Format)?;
        let value = if c.is_ascii_digit() {
            u32::from(c - b'0')
        } else if i == 12 {
            letter_value(c).ok_or(UpnError::Format)?
        } else {
            return Err(UpnError::Format);
        };
        sum += value * position;
    }
    let expected = CHECK_LETTERS[(sum % 23) as usize];
    match b[0] {
        c if c == expected => Ok(()),
        c if letter_value(c).is_some() => Err(UpnError::CheckLetter),
        _ => Err(UpnError::Format),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table() {
        let cases: &[(&str, Result<(), UpnError>)] = &[
            ("B801200005001", Ok(())),
            ("A801200005001", Err(UpnError::CheckLetter)),
            ("B80120000500", Err(UpnError::Format)),
            ("B8012000050011", Err(UpnError::Format)),
            ("b801200005001", Err(UpnError::Format)),
            ("B8012000X5001", Err(UpnError::Format)),
            ("I801200005001", Err(UpnError::Format)),
        ];
        for (input, want) in cases {
            assert_eq!(validate_upn(input), *want, "{input}");
        }
    }

    #[test]
    fn temporary_upn_with_final_letter() {
        // Find the check letter for a temporary UPN ending in 'A' and make
        // sure it round-trips while every other letter fails.
        let body = "80120000500A";
        let ok: Vec<char> = CHECK_LETTERS
            .iter()
            .map(|&c| char::from(c))
            .filter(|c| validate_upn(&format!("{c}{body}")).is_ok())
            .collect();
        assert_eq!(ok.len(), 1, "exactly one check letter fits: {ok:?}");
    }
}
