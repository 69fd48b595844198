//! Fuzz properties of the identifier parsers in `caseshare_core`: SPIFFE
//! ids (`principal::parse_spiffe_id`), NHS numbers (`nhs`), Unique Pupil
//! Numbers (`upn`), event-type patterns (`event_type::validate_pattern`),
//! field paths (`minimise::validate_field_path`) and `kind:` selectors.
//! None may panic on any string, and what each accepts must be what the
//! domain rules say: a parsed SPIFFE id prints back as the same string; an
//! accepted NHS number is ten digits whose last is the modulus-11 check
//! digit of the first nine; an accepted UPN has exactly one check letter
//! that fits; an accepted exact pattern matches itself; an accepted field
//! path names fields of `CaseEvent` and minimises an event.
//!
//! Shared by the `identifiers` cargo-fuzz target and the proptest smoke run
//! in `crates/caseshare-core/tests/fuzz_smoke.rs`.

use caseshare_core::event_type::{EVENT_TYPES, any_matches, pattern_matches, validate_pattern};
use caseshare_core::minimise::{self, validate_field_path};
use caseshare_core::nhs::{validate_nhs_number, with_check_digit};
use caseshare_core::pb;
use caseshare_core::principal::{Role, is_valid_name, parse_spiffe_id};
use caseshare_core::upn::{UpnError, validate_upn};
use caseshare_core::validate::parse_kind_selector;

/// The UPN check-letter alphabet (no I, O or S).
const UPN_LETTERS: &str = "ABCDEFGHJKLMNPQRTUVWXYZ";

/// Valid examples of every identifier kind, for mutation-based generators
/// and fuzz seeds.
pub const SEEDS: &[&str] = &[
    "spiffe://caseshare.local/agency/school-b",
    "spiffe://caseshare.local/auditor/auditor",
    "spiffe://caseshare.local/admin/admin",
    "9434765919",
    "4010232137",
    "B801200005001",
    "*",
    "health.*",
    "education.attendance_concern",
    "summary",
    "education_attendance_concern.attendance_percent",
    "child.nhs_number",
    "kind:social_care",
    "la-social-care-c",
];

/// The fuzz target's body: the bytes as a (lossily decoded) string.
pub fn check_bytes(data: &[u8]) {
    check_str(&String::from_utf8_lossy(data));
}

/// Runs every identifier parser on `s` and checks what each accepts.
/// Returns how many parsers accepted it.
pub fn check_str(s: &str) -> usize {
    let mut accepted = 0;
    accepted += usize::from(check_spiffe(s));
    accepted += usize::from(check_nhs(s));
    accepted += usize::from(check_upn(s));
    accepted += usize::from(check_pattern(s));
    accepted += usize::from(check_field_path(s));
    if let Some(kind) = parse_kind_selector(s) {
        assert!(
            [
                "kind:health",
                "kind:education",
                "kind:social_care",
                "kind:other"
            ]
            .contains(&s),
            "{s:?} parsed as {kind:?}"
        );
        accepted += 1;
    }
    if is_valid_name(s) {
        assert!(
            (1..=64).contains(&s.len())
                && s.starts_with(|c: char| c.is_ascii_lowercase())
                && s.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-'),
            "{s:?} accepted as a name"
        );
        accepted += 1;
    }
    accepted
}

fn check_spiffe(s: &str) -> bool {
    // Under the default trust domain, and under the domain the string
    // itself names (so that the accepting path is reached for any domain).
    let own_domain = s
        .strip_prefix("spiffe://")
        .and_then(|rest| rest.split_once('/'))
        .map(|(d, _)| d);
    let mut ok = false;
    for domain in std::iter::once("caseshare.local").chain(own_domain) {
        let Ok(p) = parse_spiffe_id(s, domain) else {
            continue;
        };
        ok = true;
        assert_eq!(p.spiffe_id(), s, "a SPIFFE id must print back as parsed");
        assert_eq!(p.trust_domain, domain);
        assert!(is_valid_name(&p.name), "{s:?}: name {:?}", p.name);
        assert_eq!(p.agency_id().is_some(), p.role == Role::Agency);
        let path = format!("/{}/{}", p.role.as_str(), p.name);
        assert!(s.ends_with(&path), "{s:?} parsed as {path}");
    }
    ok
}

fn check_nhs(s: &str) -> bool {
    let ten_digits = s.len() == 10 && s.bytes().all(|b| b.is_ascii_digit());
    let fits = ten_digits && with_check_digit(&s[..9]).as_deref() == Some(s);
    match validate_nhs_number(s) {
        Ok(()) => {
            assert!(fits, "{s:?} accepted as an NHS number");
            true
        }
        Err(_) => {
            assert!(!fits, "{s:?} refused although its check digit fits");
            false
        }
    }
}

fn check_upn(s: &str) -> bool {
    if validate_upn(s).is_err() {
        return false;
    }
    let b = s.as_bytes();
    assert_eq!(b.len(), 13, "{s:?} accepted as a UPN");
    assert!(
        UPN_LETTERS.as_bytes().contains(&b[0]),
        "{s:?}: check letter"
    );
    assert!(b[1..12].iter().all(u8::is_ascii_digit), "{s:?}: digits");
    assert!(
        b[12].is_ascii_digit() || UPN_LETTERS.as_bytes().contains(&b[12]),
        "{s:?}: last character"
    );
    // Exactly one check letter fits the rest.
    for letter in UPN_LETTERS.chars().filter(|&c| c != char::from(b[0])) {
        let other = format!("{letter}{}", &s[1..]);
        assert_eq!(
            validate_upn(&other),
            Err(UpnError::CheckLetter),
            "{s:?} and {other:?} both accepted"
        );
    }
    true
}

fn check_pattern(s: &str) -> bool {
    // Matching never panics, whatever the pattern.
    for (t, _) in EVENT_TYPES {
        let m = pattern_matches(s, t);
        assert_eq!(any_matches(&[s.to_string()], t), m);
        pattern_matches(t, s);
    }
    if validate_pattern(s).is_err() {
        return false;
    }
    assert!(
        !s.is_empty()
            && s.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"_.*".contains(&b)),
        "{s:?} accepted as a pattern"
    );
    if s != "*" {
        let body = s.strip_suffix(".*").unwrap_or(s);
        assert!(
            !body.is_empty() && !body.contains('*') && !body.split('.').any(str::is_empty),
            "{s:?} accepted as a pattern"
        );
        if body == s {
            assert!(
                pattern_matches(s, s),
                "exact pattern {s:?} does not match itself"
            );
        } else {
            assert!(
                pattern_matches(s, &format!("{body}.x")),
                "{s:?} does not match {body}.x"
            );
            assert!(!pattern_matches(s, body), "{s:?} matches its own prefix");
        }
    }
    true
}

fn check_field_path(s: &str) -> bool {
    if validate_field_path(s).is_err() {
        return false;
    }
    assert!(
        !s.is_empty() && !s.split('.').any(str::is_empty),
        "{s:?} accepted as a field path"
    );
    let event = pb::CaseEvent {
        event_id: "e".into(),
        summary: "s".into(),
        payload: Some(pb::case_event::Payload::EducationAttendanceConcern(
            pb::AttendanceConcern {
                period: "p".into(),
                attendance_percent: 1.0,
                unauthorised_sessions: 1,
            },
        )),
        ..Default::default()
    };
    let m = minimise::minimise(&event, &[s.to_string()])
        .unwrap_or_else(|e| panic!("accepted field path {s:?} does not minimise: {e}"));
    assert!(
        !m.redacted_fields.iter().any(|r| r == s),
        "{s:?} is allowed and yet redacted"
    );
    true
}
