//! Benchmark of one full sharing decision as the broker makes it at publish
//! and again before every delivery: the agreement lookup through
//! [`AgreementIndex::between`] plus [`decide`], over 1,000 agreements and
//! the child's 100 consents.
//!
//! The agreements are spread over 40 agencies and the four `kind:`
//! selectors; 50 of them (5%) can apply to the benchmarked pair `school-b`
//! (education) → `la-social-care-c` (social care): 24 between the two ids,
//! 12 to `kind:social_care`, 8 from `kind:education`, 6 kind to kind. Among
//! those, some are ended, expired or not yet in force, some cover other
//! event types or purposes. Of the child's 100 consents, 10 are withdrawn
//! consents for social care, one is the live consent case (b) relies on,
//! and the rest are for other recipients or purposes, some withdrawn or
//! expired.
//!
//! Cases: (a) shared under an agreement that needs no consent; (b) an
//! agreement that requires consent, and a consent is found; (c) withheld
//! because the only covering consents were withdrawn (the longest path: every
//! covering agreement scans every consent).
//!
//! Target (issue 3): median under 10 µs per decision.
//! Run: `cargo bench -p caseshare-core --bench decision`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::hint::black_box;

use caseshare_core::decision::{AgreementIndex, EventFacts, Reason, Recipient, decide};
use caseshare_core::pb::{self, AgencyKind, LawfulBasis, Purpose, Sensitivity};
use caseshare_core::time::Micros;
use criterion::{Criterion, criterion_group, criterion_main};
use prost_types::Timestamp;

const NOW: i64 = 1_800_000_000;
const CHILD: &str = "9434765919";
const PROVIDER: (&str, AgencyKind) = ("school-b", AgencyKind::Education);
const RECIPIENT: (&str, AgencyKind) = ("la-social-care-c", AgencyKind::SocialCare);

/// A small deterministic generator (xorshift64*), so every run benchmarks
/// the same data.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }
}

fn ts(seconds: i64) -> Option<Timestamp> {
    Some(Timestamp { seconds, nanos: 0 })
}

const KINDS: [AgencyKind; 4] = [
    AgencyKind::Health,
    AgencyKind::Education,
    AgencyKind::SocialCare,
    AgencyKind::Other,
];

const KIND_SELECTORS: [&str; 4] = [
    "kind:health",
    "kind:education",
    "kind:social_care",
    "kind:other",
];

const EVENT_PATTERNS: [&str; 9] = [
    "education.*",
    "education.attendance_concern",
    "education.exclusion_recorded",
    "education.sen_support_changed",
    "early_help.*",
    "health.*",
    "health.was_not_brought",
    "social_care.*",
    "*",
];

const PURPOSES: [Purpose; 4] = [
    Purpose::Safeguarding,
    Purpose::EarlyHelp,
    Purpose::HealthCare,
    Purpose::EducationSupport,
];

/// 40 other agencies: `agency-00` … `agency-39`, kinds in turn.
fn other_agencies() -> Vec<(String, AgencyKind)> {
    (0..40)
        .map(|i| (format!("agency-{i:02}"), KINDS[i % KINDS.len()]))
        .collect()
}

fn agreement(rng: &mut Rng, id: usize, provider: &str, recipient: &str) -> pb::Agreement {
    let mut purposes = vec![*rng.pick(&PURPOSES) as i32];
    if rng.below(2) == 0 {
        let p = *rng.pick(&PURPOSES) as i32;
        if !purposes.contains(&p) {
            purposes.push(p);
        }
    }
    let mut event_types = vec![rng.pick(&EVENT_PATTERNS).to_string()];
    if rng.below(3) == 0 {
        event_types.push(rng.pick(&EVENT_PATTERNS).to_string());
    }
    // Early help and safeguarding sharing is consent-based in this data set;
    // education support is a public task without consent.
    let consent_purpose = purposes.contains(&(Purpose::EarlyHelp as i32))
        || purposes.contains(&(Purpose::Safeguarding as i32));
    let mut a = pb::Agreement {
        agreement_id: format!("isa-{id:04}"),
        provider: provider.into(),
        recipient: recipient.into(),
        purposes,
        event_types,
        fields: vec![
            "summary".into(),
            "education_attendance_concern.attendance_percent".into(),
        ],
        lawful_basis: if consent_purpose {
            LawfulBasis::Consent as i32
        } else {
            LawfulBasis::PublicTask as i32
        },
        requires_consent: consent_purpose,
        valid_from: ts(NOW - 86_400 * 365),
        ..Default::default()
    };
    match rng.below(10) {
        0 => a.ended_at = ts(NOW - 3_600),
        1 => a.valid_until = ts(NOW - 60),
        2 => a.valid_from = ts(NOW + 86_400),
        3 => a.valid_until = ts(NOW + 86_400 * 30),
        _ => {}
    }
    a
}

/// 1,000 agreements, 50 of which can apply to the benchmarked pair.
fn agreements(rng: &mut Rng) -> Vec<pb::Agreement> {
    let others = other_agencies();
    let mut out = Vec::with_capacity(1_000);
    let pair_lists: [(&str, &str, usize); 4] = [
        (PROVIDER.0, RECIPIENT.0, 24),
        (PROVIDER.0, "kind:social_care", 12),
        ("kind:education", RECIPIENT.0, 8),
        ("kind:education", "kind:social_care", 6),
    ];
    for (provider, recipient, n) in pair_lists {
        for _ in 0..n {
            let id = out.len();
            out.push(agreement(rng, id, provider, recipient));
        }
    }
    // The ones the three cases rely on (among the 50 above in count terms:
    // they replace the last three pair agreements).
    out.truncate(47);
    out.push(pb::Agreement {
        agreement_id: "isa-exclusions".into(),
        provider: PROVIDER.0.into(),
        recipient: RECIPIENT.0.into(),
        purposes: vec![Purpose::EducationSupport as i32],
        event_types: vec!["education.exclusion_recorded".into()],
        lawful_basis: LawfulBasis::PublicTask as i32,
        valid_from: ts(NOW - 86_400),
        ..Default::default()
    });
    out.push(pb::Agreement {
        agreement_id: "isa-early-help".into(),
        provider: PROVIDER.0.into(),
        recipient: "kind:social_care".into(),
        purposes: vec![Purpose::EarlyHelp as i32, Purpose::Safeguarding as i32],
        event_types: vec!["education.*".into()],
        fields: vec!["education_attendance_concern.attendance_percent".into()],
        lawful_basis: LawfulBasis::PublicTask as i32,
        requires_consent: true,
        valid_from: ts(NOW - 86_400),
        ..Default::default()
    });
    out.push(pb::Agreement {
        agreement_id: "isa-early-help-kinds".into(),
        provider: "kind:education".into(),
        recipient: "kind:social_care".into(),
        purposes: vec![Purpose::EarlyHelp as i32],
        event_types: vec!["education.*".into(), "early_help.*".into()],
        lawful_basis: LawfulBasis::Consent as i32,
        requires_consent: true,
        valid_from: ts(NOW - 86_400),
        ..Default::default()
    });
    // 950 between other parties: other agencies by id or kind, on either
    // side, never the benchmarked pair.
    while out.len() < 1_000 {
        let side = |rng: &mut Rng| -> String {
            if rng.below(5) == 0 {
                rng.pick(&KIND_SELECTORS).to_string()
            } else {
                rng.pick(&others).0.clone()
            }
        };
        let provider = side(rng);
        let recipient = side(rng);
        let touches_pair = (provider == "kind:education" || provider == PROVIDER.0)
            && (recipient == "kind:social_care" || recipient == RECIPIENT.0);
        if provider == recipient || touches_pair {
            continue;
        }
        let id = out.len();
        out.push(agreement(rng, id, &provider, &recipient));
    }
    out
}

/// The child's 100 consents.
fn consents(rng: &mut Rng) -> Vec<pb::ConsentRecord> {
    let others = other_agencies();
    let base = |id: String, recipients: Vec<String>, purposes: Vec<Purpose>| pb::ConsentRecord {
        consent_id: id,
        nhs_number: CHILD.into(),
        given_by: pb::GivenBy::Parent as i32,
        purposes: purposes.into_iter().map(|p| p as i32).collect(),
        recipients,
        valid_from: ts(NOW - 86_400 * 100),
        recorded_by: PROVIDER.0.into(),
        ..Default::default()
    };
    let mut out = Vec::with_capacity(100);
    // 10 withdrawn consents that would have covered social care.
    for i in 0..10 {
        let recipient = if i % 2 == 0 {
            RECIPIENT.0
        } else {
            "kind:social_care"
        };
        let mut c = base(
            format!("consent-w{i:02}"),
            vec![recipient.into()],
            vec![Purpose::EarlyHelp],
        );
        c.event_types = vec!["education.*".into()];
        c.withdrawn_at = ts(NOW - 3_600 * (i + 1));
        c.withdrawal_reason = "parent withdrew consent".into();
        out.push(c);
    }
    // 89 for other recipients, or for social care under other purposes.
    for i in 0..89 {
        let recipient = if i % 3 == 0 {
            rng.pick(&["kind:health", "kind:education", "nhs-trust-a"])
                .to_string()
        } else {
            rng.pick(&others).0.clone()
        };
        let mut c = base(
            format!("consent-o{i:02}"),
            vec![recipient],
            vec![*rng.pick(&PURPOSES)],
        );
        if i % 10 == 0 {
            c.recipients.push(RECIPIENT.0.into());
            c.purposes = vec![Purpose::HealthCare as i32];
        }
        c.event_types = match rng.below(4) {
            0 => vec![],
            1 => vec!["education.*".into()],
            2 => vec!["health.*".into(), "early_help.*".into()],
            _ => vec!["education.attendance_concern".into()],
        };
        match rng.below(6) {
            0 => c.withdrawn_at = ts(NOW - 60),
            1 => c.valid_until = ts(NOW - 60),
            _ => {}
        }
        out.push(c);
    }
    // The live consent case (b) finds, placed late in the list.
    let mut live = base(
        "consent-live".into(),
        vec![RECIPIENT.0.into()],
        vec![Purpose::EarlyHelp],
    );
    live.event_types = vec!["education.attendance_concern".into()];
    live.evidence_ref = "school-b/forms/2026-014".into();
    out.insert(90, live);
    out
}

fn facts(event_type: &'static str, purpose: Purpose) -> EventFacts<'static> {
    EventFacts {
        provider: PROVIDER.0,
        provider_kind: PROVIDER.1,
        event_type,
        purpose,
        sensitivity: Sensitivity::Standard,
    }
}

fn bench_decision(c: &mut Criterion) {
    let mut rng = Rng(0x5EED_CA5E_5A4E_0001);
    let all = agreements(&mut rng);
    assert_eq!(all.len(), 1_000);
    let index = AgreementIndex::new(all);
    assert_eq!(index.len(), 1_000);
    let in_scope = index.between(PROVIDER, RECIPIENT).count();
    assert_eq!(in_scope, 50, "agreements the pair lookup returns");
    let consents = consents(&mut rng);
    assert_eq!(consents.len(), 100);
    let now = Micros(NOW * Micros::SECOND);
    let recipient = Recipient {
        agency_id: RECIPIENT.0,
        kind: RECIPIENT.1,
    };

    let one = |event: &EventFacts<'_>| {
        decide(
            black_box(event),
            black_box(&recipient),
            index.between(black_box(PROVIDER), black_box(RECIPIENT)),
            black_box(&consents),
            None,
            black_box(now),
        )
    };

    let cases = [
        (
            "a_shared_by_agreement",
            facts("education.exclusion_recorded", Purpose::EducationSupport),
            Reason::Agreement,
        ),
        (
            "b_consent_required_found",
            facts("education.attendance_concern", Purpose::EarlyHelp),
            Reason::Consent,
        ),
        (
            "c_withheld_consent_withdrawn",
            facts("education.sen_support_changed", Purpose::EarlyHelp),
            Reason::ConsentWithdrawn,
        ),
    ];
    for (name, event, want) in &cases {
        let outcome = one(event);
        assert_eq!(outcome.reason, *want, "{name}: {outcome:?}");
        if *want == Reason::Consent {
            assert_eq!(outcome.consent_id, "consent-live");
        }
    }

    let mut group = c.benchmark_group("decision (1,000 agreements, 100 consents)");
    for (name, event, _) in &cases {
        group.bench_function(*name, |b| b.iter(|| one(event)));
    }
    group.finish();
}

criterion_group!(benches, bench_decision);
criterion_main!(benches);
