//! The wire walk against the decoded walk it replaced: on every bound of
//! the table and on seeded mutations of real requests, whatever the wire
//! walk answers is what the decoded walk answers (as a set of violations);
//! what it leaves to the decoder gets the decoded walk's answer.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use prost::Message;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::bounds::{check_decoded, check_wire};
use super::limits::FIELD_LIMITS;
use super::tests::request_with;
use super::*;

fn sorted(mut v: Vec<(String, String)>) -> Vec<(String, String)> {
    v.sort();
    v
}

/// The public answer as (field, description) pairs.
fn public(message: &str, encoded: &[u8]) -> Vec<(String, String)> {
    match check_encoded(message, encoded) {
        Ok(()) => Vec::new(),
        Err(v) => v.0.into_iter().map(|f| (f.field, f.description)).collect(),
    }
}

#[test]
fn the_wire_walk_agrees_on_every_bound_at_its_limit_and_past_it() {
    for limit in FIELD_LIMITS {
        let max = if limit.max_items > 0 {
            limit.max_items
        } else {
            limit.max_bytes
        };
        for n in [max, max + 1] {
            for filler in ["a", "é", "\0", "\n", "\u{9b}"] {
                let (root, path, bytes) = request_with(limit, n, filler);
                let wire = check_wire(&root, &bytes)
                    .unwrap_or_else(|e| panic!("{root} {path} x{n} {filler:?}: {e}"));
                let decoded = check_decoded(&root, &bytes).unwrap();
                assert_eq!(
                    sorted(wire),
                    sorted(decoded),
                    "{root} with {path} at {n} of {filler:?}"
                );
            }
        }
    }
}

fn bases() -> Vec<(&'static str, Vec<u8>)> {
    // The table tests' event, with what they leave unset: a local id, a
    // multi-line summary, nanos, recipients.
    let mut event = super::tests::event();
    if let Some(child) = event.child.as_mut() {
        child.local_ids.push(pb::LocalId {
            scheme: "upn".into(),
            value: "A801200005001".into(),
        });
    }
    if let Some(at) = event.occurred_at.as_mut() {
        at.nanos = 5;
    }
    event.summary = "Attendance has fallen.\nTwo absences.".into();
    let mut publish = pb::PublishRequest {
        event: Some(event),
        ..Default::default()
    };
    publish.to_agencies = ["la-social-care-c", "nhs-trust-a"]
        .map(String::from)
        .to_vec();
    let ack = pb::AckRequest {
        subscription: "s".into(),
        delivery_ids: (0..20).map(|i| format!("d-{i}")).collect(),
    };
    let agreement = pb::Agreement {
        agreement_id: "isa".into(),
        purposes: vec![1, 2, 3],
        event_types: vec!["*".into(), "health.*".into()],
        ..pb::Agreement::default()
    };
    vec![
        ("PublishRequest", publish.encode_to_vec()),
        ("AckRequest", ack.encode_to_vec()),
        ("Agreement", agreement.encode_to_vec()),
    ]
}

fn mutate(rng: &mut StdRng, base: &[u8]) -> Vec<u8> {
    let mut b = base.to_vec();
    for _ in 0..=rng.gen_range(0..3) {
        let at = rng.gen_range(0..b.len().max(1));
        match rng.gen_range(0..5) {
            0 if !b.is_empty() => b[at] ^= 1 << rng.gen_range(0..8),
            1 => b.insert(at, rng.r#gen()),
            2 if !b.is_empty() => {
                b.remove(at);
            }
            3 => {
                let end = (at + 1 + rng.gen_range(0..16)).min(b.len());
                let piece = b.get(at..end).unwrap_or_default().to_vec();
                b.splice(at..at, piece);
            }
            _ => b.truncate(at),
        }
    }
    b
}

#[test]
fn mutated_requests_get_the_decoded_walks_answer() {
    let seed = std::env::var("CASESHARE_WIRE_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(1, |d| d.as_nanos() as u64)
                | 1
        });
    println!("wire walk mutations: seed {seed} (CASESHARE_WIRE_SEED={seed} repeats it)");
    let mut rng = StdRng::seed_from_u64(seed);
    let (mut taken, mut left) = (0, 0);
    for round in 0..4_000 {
        for (message, base) in bases() {
            let bytes = mutate(&mut rng, &base);
            let decoded = check_decoded(message, &bytes);
            match check_wire(message, &bytes) {
                Ok(wire) => {
                    taken += 1;
                    let decoded = decoded.clone().unwrap_or_else(|e| {
                        panic!("seed {seed} round {round} {message}: the wire walk took what does not decode ({e}): {bytes:?}")
                    });
                    assert_eq!(
                        sorted(wire),
                        sorted(decoded),
                        "seed {seed} round {round} {message}: {bytes:?}"
                    );
                }
                Err(_) => left += 1,
            }
            // Whatever path it took, the public answer is the decoded walk's.
            let want = match decoded {
                Ok(v) => sorted(v),
                Err(e) => vec![(String::new(), format!("the request could not be read: {e}"))],
            };
            assert_eq!(
                sorted(public(message, &bytes)),
                want,
                "seed {seed} round {round} {message}"
            );
        }
    }
    assert!(taken > 1_000 && left > 1_000, "taken {taken}, left {left}");
}

#[test]
fn what_decoding_would_merge_is_left_to_the_decoder() {
    // Two encodings one after the other decode as one merged message: the
    // event's local ids add up past their bound only when merged.
    let half = |n: usize| pb::PublishRequest {
        event: Some(pb::CaseEvent {
            child: Some(pb::ChildRef {
                nhs_number: "9434765919".into(),
                local_ids: (0..n)
                    .map(|i| pb::LocalId {
                        scheme: "upn".into(),
                        value: format!("id-{i}"),
                    })
                    .collect(),
            }),
            ..Default::default()
        }),
        ..Default::default()
    };
    let max = limits::field_limit("ChildRef", "local_ids")
        .unwrap()
        .max_items;
    let mut bytes = half(max / 2 + 1).encode_to_vec();
    bytes.extend(half(max / 2 + 1).encode_to_vec());
    assert!(check_wire("PublishRequest", &bytes).is_err());
    let got = public("PublishRequest", &bytes);
    assert_eq!(got, check_decoded("PublishRequest", &bytes).unwrap());
    assert!(
        got.iter().any(|(f, _)| f == "event.child.local_ids"),
        "{got:?}"
    );
}
