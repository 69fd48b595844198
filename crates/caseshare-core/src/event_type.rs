//! Event types: the stable dotted names computed from an event's payload,
//! and the patterns (`exact`, `prefix.*`, `*`) that subscriptions, agreements
//! and consents use to select them.

use crate::pb::case_event::Payload;

/// Every event type the v1 schema defines, with the `CaseEvent` oneof field
/// that carries it. The field name is the event type with its first `.`
/// replaced by `_`.
pub const EVENT_TYPES: &[(&str, &str)] = &[
    (
        "social_care.referral_accepted",
        "social_care_referral_accepted",
    ),
    (
        "social_care.child_protection_plan_started",
        "social_care_child_protection_plan_started",
    ),
    (
        "social_care.child_protection_plan_ended",
        "social_care_child_protection_plan_ended",
    ),
    (
        "social_care.looked_after_started",
        "social_care_looked_after_started",
    ),
    (
        "social_care.looked_after_ended",
        "social_care_looked_after_ended",
    ),
    (
        "early_help.assessment_started",
        "early_help_assessment_started",
    ),
    (
        "early_help.assessment_completed",
        "early_help_assessment_completed",
    ),
    (
        "early_help.tac_meeting_scheduled",
        "early_help_tac_meeting_scheduled",
    ),
    (
        "early_help.lead_professional_assigned",
        "early_help_lead_professional_assigned",
    ),
    (
        "education.attendance_concern",
        "education_attendance_concern",
    ),
    (
        "education.exclusion_recorded",
        "education_exclusion_recorded",
    ),
    (
        "education.sen_support_changed",
        "education_sen_support_changed",
    ),
    ("health.emergency_attendance", "health_emergency_attendance"),
    ("health.was_not_brought", "health_was_not_brought"),
    (
        "health.mental_health_referral",
        "health_mental_health_referral",
    ),
];

/// The event type of a payload.
pub fn event_type(payload: &Payload) -> &'static str {
    match payload {
        Payload::SocialCareReferralAccepted(_) => "social_care.referral_accepted",
        Payload::SocialCareChildProtectionPlanStarted(_) => {
            "social_care.child_protection_plan_started"
        }
        Payload::SocialCareChildProtectionPlanEnded(_) => "social_care.child_protection_plan_ended",
        Payload::SocialCareLookedAfterStarted(_) => "social_care.looked_after_started",
        Payload::SocialCareLookedAfterEnded(_) => "social_care.looked_after_ended",
        Payload::EarlyHelpAssessmentStarted(_) => "early_help.assessment_started",
        Payload::EarlyHelpAssessmentCompleted(_) => "early_help.assessment_completed",
        Payload::EarlyHelpTacMeetingScheduled(_) => "early_help.tac_meeting_scheduled",
        Payload::EarlyHelpLeadProfessionalAssigned(_) => "early_help.lead_professional_assigned",
        Payload::EducationAttendanceConcern(_) => "education.attendance_concern",
        Payload::EducationExclusionRecorded(_) => "education.exclusion_recorded",
        Payload::EducationSenSupportChanged(_) => "education.sen_support_changed",
        Payload::HealthEmergencyAttendance(_) => "health.emergency_attendance",
        Payload::HealthWasNotBrought(_) => "health.was_not_brought",
        Payload::HealthMentalHealthReferral(_) => "health.mental_health_referral",
    }
}

/// The `CaseEvent` field that carries an event type's payload.
pub fn payload_field(event_type: &str) -> Option<&'static str> {
    EVENT_TYPES
        .iter()
        .find(|(t, _)| *t == event_type)
        .map(|(_, f)| *f)
}

/// Why an event-type pattern is malformed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PatternError {
    /// Empty string.
    #[error("an event-type pattern must not be empty")]
    Empty,
    /// Not `*`, `prefix.*` or `a.b` in `[a-z0-9_.]`.
    #[error(
        "an event-type pattern is `*`, `domain.*` or an exact type like `health.was_not_brought`"
    )]
    Syntax,
}

/// Checks an event-type pattern's syntax: `*`, `prefix.*` or an exact name,
/// lower-case letters, digits, `_` and `.`.
pub fn validate_pattern(p: &str) -> Result<(), PatternError> {
    if p.is_empty() {
        return Err(PatternError::Empty);
    }
    if p == "*" {
        return Ok(());
    }
    let body = p.strip_suffix(".*").unwrap_or(p);
    let ok = !body.is_empty()
        && !body.starts_with('.')
        && !body.ends_with('.')
        && !body.contains("..")
        && body
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'.');
    if ok {
        Ok(())
    } else {
        Err(PatternError::Syntax)
    }
}

/// True if `event_type` matches `pattern`: `*` matches everything,
/// `prefix.*` matches types under `prefix.` (at any depth), anything else
/// must be equal.
pub fn pattern_matches(pattern: &str, event_type: &str) -> bool {
    if pattern == "*" {
        return true;
    }
    match pattern.strip_suffix(".*") {
        Some(prefix) => event_type
            .strip_prefix(prefix)
            .is_some_and(|rest| rest.starts_with('.') && rest.len() > 1),
        None => pattern == event_type,
    }
}

/// True if any pattern matches; an empty list matches everything.
pub fn any_matches(patterns: &[String], event_type: &str) -> bool {
    patterns.is_empty() || patterns.iter().any(|p| pattern_matches(p, event_type))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pattern_table() {
        let cases = [
            ("*", "health.was_not_brought", true),
            ("health.*", "health.was_not_brought", true),
            ("health.*", "healthy.was_not_brought", false),
            ("health.*", "health", false),
            ("early_help.*", "early_help.assessment_started", true),
            ("early_help.*", "education.attendance_concern", false),
            ("health.was_not_brought", "health.was_not_brought", true),
            (
                "health.was_not_brought",
                "health.was_not_brought_again",
                false,
            ),
            ("health.was", "health.was_not_brought", false),
        ];
        for (p, t, want) in cases {
            assert_eq!(pattern_matches(p, t), want, "{p} vs {t}");
        }
    }

    #[test]
    fn pattern_syntax() {
        for ok in ["*", "health.*", "health.was_not_brought", "a.b.c"] {
            assert_eq!(validate_pattern(ok), Ok(()), "{ok}");
        }
        for bad in [
            "",
            ".*",
            "Health.*",
            "health.",
            "health..x",
            "he alth",
            "*.x",
        ] {
            assert!(validate_pattern(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn field_names_follow_the_rule() {
        for (t, f) in EVENT_TYPES {
            assert_eq!(t.replacen('.', "_", 1), *f);
            assert_eq!(payload_field(t), Some(*f));
        }
    }
}
