//! NHS number validation (10 digits, modulus-11 check digit).

/// Why an NHS number is invalid.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum NhsNumberError {
    /// Not exactly ten ASCII digits.
    #[error("an NHS number is exactly 10 digits")]
    Format,
    /// The modulus-11 check computes to 10: no valid number has these digits.
    #[error("the NHS number's check computes to 10, so it cannot be valid")]
    CheckIsTen,
    /// The last digit is not the modulus-11 check digit.
    #[error("the NHS number's check digit is wrong")]
    CheckDigit,
}

/// Checks an NHS number: 10 ASCII digits whose last is the modulus-11 check
/// digit of the first nine (weights 10 down to 2; 11 → 0; 10 → invalid).
pub fn validate_nhs_number(s: &str) -> Result<(), NhsNumberError> {
    let bytes = s.as_bytes();
    if bytes.len() != 10 || !bytes.iter().all(u8::is_ascii_digit) {
        return Err(NhsNumberError::Format);
    }
    let sum: u32 = bytes[..9]
        .iter()
        .zip((2..=10).rev())
        .map(|(d, w)| u32::from(d - b'0') * w)
        .sum();
    let check = match 11 - (sum % 11) {
        11 => 0,
        10 => return Err(NhsNumberError::CheckIsTen),
        c => c,
    };
    if u32::from(bytes[9] - b'0') == check {
        Ok(())
    } else {
        Err(NhsNumberError::CheckDigit)
    }
}

/// Appends the check digit to nine digits, if one exists (test-data helper).
pub fn with_check_digit(nine: &str) -> Option<String> {
    if nine.len() != 9 || !nine.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    (0..10u8)
        .map(|d| format!("{nine}{d}"))
        .find(|n| validate_nhs_number(n).is_ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table() {
        let cases: &[(&str, Result<(), NhsNumberError>)] = &[
            ("9434765919", Ok(())),
            ("4010232137", Ok(())),
            ("9434765918", Err(NhsNumberError::CheckDigit)),
            ("943476591", Err(NhsNumberError::Format)),
            ("94347659190", Err(NhsNumberError::Format)),
            ("943476591a", Err(NhsNumberError::Format)),
            ("943 476 59", Err(NhsNumberError::Format)),
            ("", Err(NhsNumberError::Format)),
            // 100000000x: sum 10 → 11 - 10 = 1 → check digit 1.
            ("1000000001", Ok(())),
            ("1000000000", Err(NhsNumberError::CheckDigit)),
            // 000000000x: sum 0 → 11 → check digit 0.
            ("0000000000", Ok(())),
            // 100000001x: sum 10 + 2 = 12 → 11 - 1 = 10 → no valid number.
            ("1000000010", Err(NhsNumberError::CheckIsTen)),
            ("1000000019", Err(NhsNumberError::CheckIsTen)),
        ];
        for (input, want) in cases {
            assert_eq!(validate_nhs_number(input), *want, "{input}");
        }
    }

    #[test]
    fn check_digit_helper_agrees() {
        assert_eq!(with_check_digit("943476591").as_deref(), Some("9434765919"));
        assert_eq!(with_check_digit("100000001"), None);
    }
}
