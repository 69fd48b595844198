//! Benchmark of the bounds walk ([`check_bounds`]) on a typical publish
//! request (an attendance concern with a summary, a local id, two
//! `to_agencies`) and on one at every list's limit, to show what bounding
//! every field costs per publish.
//! Run: `cargo bench -p caseshare-core --bench bounds`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::hint::black_box;

use caseshare_core::pb;
use caseshare_core::validate::{check_bounds, limits};
use criterion::{Criterion, criterion_group, criterion_main};

fn typical() -> pb::PublishRequest {
    pb::PublishRequest {
        event: Some(pb::CaseEvent {
            event_id: "school-b:2026:000123".into(),
            child: Some(pb::ChildRef {
                nhs_number: "9434765919".into(),
                local_ids: vec![pb::LocalId {
                    scheme: "upn".into(),
                    value: "A801200005001".into(),
                }],
            }),
            purpose: pb::Purpose::EarlyHelp as i32,
            occurred_at: Some(prost_types::Timestamp {
                seconds: 1_793_000_000,
                nanos: 0,
            }),
            summary: "Attendance has fallen sharply this half term; two unexplained absences."
                .into(),
            payload: Some(pb::case_event::Payload::EducationAttendanceConcern(
                pb::AttendanceConcern {
                    period: "2026-autumn-1".into(),
                    attendance_percent: 78.5,
                    unauthorised_sessions: 11,
                },
            )),
            ..Default::default()
        }),
        basis: None,
        to_agencies: vec!["la-social-care-c".into(), "nhs-trust-a".into()],
        trace_context: None,
    }
}

fn bench_bounds(c: &mut Criterion) {
    let mut group = c.benchmark_group("bounds");
    let req = typical();
    assert!(check_bounds(&req).is_ok());
    group.bench_function("typical_publish", |b| {
        b.iter(|| check_bounds(black_box(&req)))
    });
    let mut full = typical();
    full.to_agencies = (0..limits::MAX_AGENCIES)
        .map(|i| format!("agency-{i:057}"))
        .collect();
    assert!(check_bounds(&full).is_ok());
    group.bench_function("publish_at_list_limits", |b| {
        b.iter(|| check_bounds(black_box(&full)))
    });
    group.finish();
}

criterion_group!(benches, bench_bounds);
criterion_main!(benches);
