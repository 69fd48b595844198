//! The schema guard (`caseshare-schema check | baseline | docs`): the
//! committed baseline and docs/SCHEMA.md match the current protos, known
//! breaking edits to a copy of `proto/` are each rejected with a message
//! naming the element, compatible edits pass, and every lint rule fires.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};

use caseshare_schema::{self as schema, SchemaError};
use prost::Message as _;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .unwrap()
}

fn real_baseline() -> PathBuf {
    repo().join(schema::BASELINE_PATH)
}

/// A copy of `proto/caseshare/v1/*.proto` in a temp dir; `.proto()` is the
/// include root to pass to the schema functions.
struct ProtoCopy {
    dir: tempfile::TempDir,
}

impl ProtoCopy {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let from = repo().join(schema::PROTO_DIR).join(schema::V1_DIR);
        let to = dir.path().join("proto").join(schema::V1_DIR);
        std::fs::create_dir_all(&to).unwrap();
        for entry in std::fs::read_dir(&from).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "proto") {
                std::fs::copy(&path, to.join(path.file_name().unwrap())).unwrap();
            }
        }
        ProtoCopy { dir }
    }

    fn proto(&self) -> PathBuf {
        self.dir.path().join("proto")
    }

    /// Replaces the one occurrence of `from` in `caseshare/v1/<file>`.
    fn edit(&self, file: &str, from: &str, to: &str) -> &Self {
        let path = self.proto().join(schema::V1_DIR).join(file);
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(
            text.matches(from).count(),
            1,
            "{file} should contain {from:?} exactly once"
        );
        std::fs::write(&path, text.replacen(from, to, 1)).unwrap();
        self
    }

    /// Appends text to `caseshare/v1/<file>`.
    fn append(&self, file: &str, text: &str) -> &Self {
        let path = self.proto().join(schema::V1_DIR).join(file);
        let mut all = std::fs::read_to_string(&path).unwrap();
        all.push_str(text);
        std::fs::write(&path, all).unwrap();
        self
    }

    fn check(&self) -> Vec<String> {
        schema::check(&self.proto(), &real_baseline()).unwrap()
    }

    fn report(&self) -> schema::CheckReport {
        schema::check_report(&self.proto(), &real_baseline()).unwrap()
    }
}

fn assert_named(problems: &[String], expected: &str, case: &str) {
    assert!(
        problems.iter().any(|p| p.contains(expected)),
        "{case}: expected a problem containing {expected:?}, got {problems:#?}"
    );
}

// ---------------------------------------------------------------------------
// (1) and (2): the committed artefacts are current

#[test]
fn committed_baseline_matches_the_schema_and_lints_are_clean() {
    let problems = schema::check(&repo().join(schema::PROTO_DIR), &real_baseline()).unwrap();
    assert!(
        problems.is_empty(),
        "`caseshare-schema check` fails on the repository:\n{}",
        problems.join("\n")
    );

    // The baseline is the stable form: the v1 files only, no source info.
    let baseline = schema::load_baseline(&real_baseline()).unwrap();
    let names: Vec<&str> = baseline.file.iter().map(|f| f.name()).collect();
    assert!(names.contains(&"caseshare/v1/events.proto"), "{names:?}");
    assert!(
        names.iter().all(|n| n.starts_with("caseshare/v1/")),
        "{names:?}"
    );
    assert!(baseline.file.iter().all(|f| f.source_code_info.is_none()));
    let current = schema::compile(&repo().join(schema::PROTO_DIR)).unwrap();
    assert_eq!(current.file.len(), baseline.file.len());
}

#[test]
fn docs_schema_md_is_up_to_date() {
    let generated = schema::docs(
        &repo().join(schema::PROTO_DIR),
        &repo().join(schema::EXAMPLES_DIR),
    )
    .unwrap();
    let committed = std::fs::read_to_string(repo().join(schema::DOCS_PATH)).unwrap_or_default();
    if generated != committed {
        let first_diff = generated
            .lines()
            .zip(committed.lines())
            .position(|(a, b)| a != b)
            .map_or_else(
                || "(one is a prefix of the other)".to_string(),
                |i| format!("line {}", i + 1),
            );
        panic!(
            "docs/SCHEMA.md is out of date (first difference at {first_diff}): \
             run `caseshare-schema docs > docs/SCHEMA.md`"
        );
    }
}

#[test]
fn docs_cover_services_messages_enums_and_every_event_type() {
    let md = schema::docs(
        &repo().join(schema::PROTO_DIR),
        &repo().join(schema::EXAMPLES_DIR),
    )
    .unwrap();
    for service in ["Publisher", "Subscriber", "Consent", "Admin", "Audit"] {
        assert!(md.contains(&format!("### {service}\n")), "{service}");
    }
    assert!(md.contains("#### Publisher.PublishStream"));
    assert!(
        md.contains("rpc PublishStream(stream PublishRequest) returns (stream PublishResponse);")
    );
    assert!(md.contains("| `nhs_number` | 1 | `string` | singular |"));
    assert!(md.contains("| `SAFEGUARDING` | 1 |"));
    for (event_type, field) in caseshare_core::event_type::EVENT_TYPES {
        assert!(md.contains(&format!("### {event_type}\n")), "{event_type}");
        assert!(md.contains(&format!("examples/events/{event_type}.json")));
        assert!(md.contains(&format!("`CaseEvent.{field}`")), "{field}");
    }
    assert_eq!(md.matches("```json").count(), 15);
    // Deterministic.
    let again = schema::docs(
        &repo().join(schema::PROTO_DIR),
        &repo().join(schema::EXAMPLES_DIR),
    )
    .unwrap();
    assert_eq!(md, again);
}

#[test]
fn docs_fail_on_a_missing_or_wrong_example() {
    let examples = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(repo().join(schema::EXAMPLES_DIR)).unwrap() {
        let path = entry.unwrap().path();
        std::fs::copy(&path, examples.path().join(path.file_name().unwrap())).unwrap();
    }
    let proto = repo().join(schema::PROTO_DIR);
    assert!(schema::docs(&proto, examples.path()).is_ok());

    // An example carrying another event type's payload.
    let wrong = examples.path().join("health.was_not_brought.json");
    std::fs::copy(
        examples.path().join("health.emergency_attendance.json"),
        &wrong,
    )
    .unwrap();
    let err = schema::docs(&proto, examples.path()).unwrap_err();
    assert!(err.to_string().contains("health_was_not_brought"), "{err}");

    std::fs::remove_file(&wrong).unwrap();
    let err = schema::docs(&proto, examples.path()).unwrap_err();
    assert!(
        err.to_string().contains("health.was_not_brought.json"),
        "{err}"
    );
}

// ---------------------------------------------------------------------------
// (3) breaking edits are rejected, naming the element

const TEAM: &str =
    "  // The team now responsible (e.g. `MASH`, `Assessment Team North`).\n  string team = 3;\n";

#[test]
fn breaking_edits_are_each_rejected_naming_the_element() {
    type Edit = (&'static str, &'static str, &'static str);
    let cases: &[(&str, &[Edit], &str)] = &[
        (
            "remove a field",
            &[("events.proto", TEAM, "")],
            "breaking: removed field caseshare.v1.ReferralAccepted.team (number 3)",
        ),
        (
            "renumber a field",
            &[("events.proto", "string team = 3;", "string team = 4;")],
            "breaking: renumbered field caseshare.v1.ReferralAccepted.team: 3 -> 4",
        ),
        (
            "rename a field (its number reused by another name)",
            &[("events.proto", "string team = 3;", "string team_name = 3;")],
            "breaking: field number 3 of caseshare.v1.ReferralAccepted reused by a different name: `team` is now `team_name`",
        ),
        (
            "change a field's scalar type",
            &[(
                "events.proto",
                "uint32 unauthorised_sessions = 3;",
                "int64 unauthorised_sessions = 3;",
            )],
            "breaking: changed type of field caseshare.v1.AttendanceConcern.unauthorised_sessions: uint32 -> int64",
        ),
        (
            "change a field's message type",
            &[("events.proto", "ChildRef child = 2;", "LocalId child = 2;")],
            "breaking: changed type of field caseshare.v1.CaseEvent.child: caseshare.v1.ChildRef -> caseshare.v1.LocalId",
        ),
        (
            "make a field repeated",
            &[(
                "events.proto",
                "string location = 3;",
                "repeated string location = 3;",
            )],
            "breaking: changed cardinality of field caseshare.v1.TacMeetingScheduled.location: singular -> repeated",
        ),
        (
            "make a field optional (explicit presence)",
            &[(
                "events.proto",
                "string location = 3;",
                "optional string location = 3;",
            )],
            "breaking: changed cardinality of field caseshare.v1.TacMeetingScheduled.location: singular -> optional",
        ),
        (
            "move a field into a oneof",
            &[
                ("events.proto", "  string corrects_event_id = 7;\n", ""),
                (
                    "events.proto",
                    "  oneof payload {\n",
                    "  oneof payload {\n    // Moved.\n    string corrects_event_id = 7;\n",
                ),
            ],
            "breaking: moved field caseshare.v1.CaseEvent.corrects_event_id into oneof `payload`",
        ),
        (
            "remove an RPC",
            &[(
                "publisher.proto",
                "  rpc GetEventStatus(GetEventStatusRequest) returns (EventStatus);\n",
                "",
            )],
            "breaking: removed RPC caseshare.v1.Publisher.GetEventStatus",
        ),
        (
            "change an RPC's streaming",
            &[(
                "publisher.proto",
                "rpc PublishStream(stream PublishRequest)",
                "rpc PublishStream(PublishRequest)",
            )],
            "breaking: changed streaming of RPC caseshare.v1.Publisher.PublishStream: bidirectional streaming -> server streaming",
        ),
        (
            "change an RPC's request type",
            &[(
                "publisher.proto",
                "rpc GetEventStatus(GetEventStatusRequest)",
                "rpc GetEventStatus(RetractEventRequest)",
            )],
            "breaking: changed request type of RPC caseshare.v1.Publisher.GetEventStatus: caseshare.v1.GetEventStatusRequest -> caseshare.v1.RetractEventRequest",
        ),
        (
            "change an RPC's response type",
            &[(
                "publisher.proto",
                "returns (RetractEventResponse);",
                "returns (EventStatus);",
            )],
            "breaking: changed response type of RPC caseshare.v1.Publisher.RetractEvent: caseshare.v1.RetractEventResponse -> caseshare.v1.EventStatus",
        ),
        (
            "remove an enum value",
            &[(
                "events.proto",
                "  // More than one category.\n  MULTIPLE_CATEGORIES = 5;\n",
                "",
            )],
            "breaking: removed enum value caseshare.v1.ChildProtectionCategory.MULTIPLE_CATEGORIES (number 5)",
        ),
        (
            "renumber an enum value",
            &[(
                "events.proto",
                "MULTIPLE_CATEGORIES = 5;",
                "MULTIPLE_CATEGORIES = 6;",
            )],
            "breaking: renumbered enum value caseshare.v1.ChildProtectionCategory.MULTIPLE_CATEGORIES: 5 -> 6",
        ),
        (
            "remove (rename) a message",
            &[
                (
                    "events.proto",
                    "message LookedAfterEnded {",
                    "message LookedAfterClosed {",
                ),
                (
                    "events.proto",
                    "LookedAfterEnded social_care_looked_after_ended = 24;",
                    "LookedAfterClosed social_care_looked_after_ended = 24;",
                ),
            ],
            "breaking: removed message caseshare.v1.LookedAfterEnded",
        ),
        (
            "remove (rename) an enum",
            &[
                (
                    "events.proto",
                    "enum ExclusionKind {",
                    "enum ExclusionType {",
                ),
                (
                    "events.proto",
                    "ExclusionKind kind = 1;",
                    "ExclusionType kind = 1;",
                ),
            ],
            "breaking: removed enum caseshare.v1.ExclusionKind",
        ),
        (
            "remove (rename) a service",
            &[("consent.proto", "service Consent {", "service Consents {")],
            "breaking: removed service caseshare.v1.Consent",
        ),
        (
            "use a number the message reserves",
            &[(
                "events.proto",
                TEAM,
                "  // The team now responsible.\n  string team = 3;\n  reserved 9, 10 to 12;\n  // Reuses a reserved number.\n  string sneaky = 11;\n",
            )],
            "breaking: field caseshare.v1.ReferralAccepted.sneaky reuses reserved number 11",
        ),
        (
            "use a number an enum reserves",
            &[(
                "events.proto",
                "  MULTIPLE_CATEGORIES = 5;\n",
                "  MULTIPLE_CATEGORIES = 5;\n  reserved 7;\n  // Reuses a reserved number.\n  SNEAKY = 7;\n",
            )],
            "breaking: enum value caseshare.v1.ChildProtectionCategory.SNEAKY reuses reserved number 7",
        ),
    ];
    for (case, edits, expected) in cases {
        let copy = ProtoCopy::new();
        for (file, from, to) in *edits {
            copy.edit(file, from, to);
        }
        let problems = copy.check();
        assert_named(&problems, expected, case);
        assert!(
            problems.iter().all(|p| !p.contains('\n')),
            "{case}: every problem is one line: {problems:#?}"
        );
    }
}

#[test]
fn reserved_numbers_and_names_in_the_baseline_stay_reserved() {
    // A baseline that reserves number 9 and name `old_team`...
    let reserving = ProtoCopy::new();
    reserving.edit(
        "events.proto",
        TEAM,
        &format!("{TEAM}  reserved 9;\n  reserved \"old_team\";\n"),
    );
    let baseline = reserving.dir.path().join("baseline.binpb");
    schema::baseline(&reserving.proto(), &baseline).unwrap();
    assert!(
        schema::check(&reserving.proto(), &baseline)
            .unwrap()
            .is_empty()
    );

    // ...and a schema that drops the reservation and reuses both.
    let reusing = ProtoCopy::new();
    reusing.edit(
        "events.proto",
        TEAM,
        &format!("{TEAM}  // The team before.\n  string old_team = 9;\n"),
    );
    let problems = schema::check(&reusing.proto(), &baseline).unwrap();
    for expected in [
        "breaking: field caseshare.v1.ReferralAccepted.old_team reuses reserved number 9",
        "breaking: field caseshare.v1.ReferralAccepted.old_team reuses reserved name `old_team`",
        "breaking: removed the reservation of number 9 in caseshare.v1.ReferralAccepted",
        "breaking: removed the reservation of name `old_team` in caseshare.v1.ReferralAccepted",
    ] {
        assert_named(&problems, expected, "reuse a reserved number");
    }

    // Widening a reservation is fine; narrowing it is not.
    let widened = ProtoCopy::new();
    widened.edit(
        "events.proto",
        TEAM,
        &format!("{TEAM}  reserved 8 to 10;\n  reserved \"old_team\", \"older_team\";\n"),
    );
    assert!(
        schema::check(&widened.proto(), &baseline)
            .unwrap()
            .is_empty()
    );
}

// ---------------------------------------------------------------------------
// (4) compatible edits pass

const ADD_FIELD: (&str, &str, &str) = (
    "events.proto",
    TEAM,
    "  // The team now responsible (e.g. `MASH`, `Assessment Team North`).\n  string team = 3;\n  // The social worker's team manager, if known.\n  string team_manager = 4;\n",
);
const ADD_ENUM_VALUE: (&str, &str, &str) = (
    "events.proto",
    "  MULTIPLE_CATEGORIES = 5;\n",
    "  MULTIPLE_CATEGORIES = 5;\n  // Not recorded by the local authority.\n  NOT_RECORDED = 6;\n",
);
const ADD_RPC: (&str, &str, &str) = (
    "publisher.proto",
    "  rpc RetractEvent(RetractEventRequest) returns (RetractEventResponse);\n",
    "  rpc RetractEvent(RetractEventRequest) returns (RetractEventResponse);\n  // Checks an event without publishing it.\n  rpc ValidateEvent(PublishRequest) returns (ValidateEventResponse);\n",
);
const ADD_MESSAGE: &str = "\n// The outcome of validating an event.\nmessage ValidateEventResponse {\n  // The event type the broker computed.\n  string event_type = 1;\n}\n";
const ADD_SERVICE: &str = "\n// A service added later.\nservice Directory {\n  // Lists agencies, for everyone.\n  rpc Lookup(ValidateEventResponse) returns (ValidateEventResponse);\n}\n";

#[test]
fn compatible_edits_pass() {
    let add_field = ProtoCopy::new();
    add_field.edit(ADD_FIELD.0, ADD_FIELD.1, ADD_FIELD.2);
    let report = add_field.report();
    assert!(report.problems().is_empty(), "{report:#?}");
    assert_eq!(
        report.additions,
        ["added field caseshare.v1.ReferralAccepted.team_manager (number 4)"]
    );

    let add_message = ProtoCopy::new();
    add_message.append("publisher.proto", ADD_MESSAGE);
    let report = add_message.report();
    assert!(report.problems().is_empty(), "{report:#?}");
    assert_eq!(
        report.additions,
        ["added message caseshare.v1.ValidateEventResponse"]
    );

    let add_value = ProtoCopy::new();
    add_value.edit(ADD_ENUM_VALUE.0, ADD_ENUM_VALUE.1, ADD_ENUM_VALUE.2);
    let report = add_value.report();
    assert!(report.problems().is_empty(), "{report:#?}");
    assert_eq!(
        report.additions,
        ["added enum value caseshare.v1.ChildProtectionCategory.NOT_RECORDED (number 6)"]
    );

    let add_rpc = ProtoCopy::new();
    add_rpc.append("publisher.proto", ADD_MESSAGE);
    add_rpc.edit(ADD_RPC.0, ADD_RPC.1, ADD_RPC.2);
    add_rpc.append("publisher.proto", ADD_SERVICE);
    let report = add_rpc.report();
    assert!(report.problems().is_empty(), "{report:#?}");
    assert!(
        report
            .additions
            .contains(&"added RPC caseshare.v1.Publisher.ValidateEvent".to_string()),
        "{report:#?}"
    );
    assert!(
        report
            .additions
            .contains(&"added service caseshare.v1.Directory".to_string()),
        "{report:#?}"
    );

    // Comment edits never matter to the guard.
    let comments = ProtoCopy::new();
    comments.edit(
        "events.proto",
        "// The team now responsible (e.g. `MASH`, `Assessment Team North`).",
        "// The team responsible from now on.",
    );
    assert!(comments.check().is_empty());
}

#[test]
fn baseline_locks_in_additions_and_refuses_breaking_changes() {
    let dir = tempfile::tempdir().unwrap();
    let baseline = dir.path().join("nested/baseline.binpb");
    std::fs::copy(real_baseline(), dir.path().join("seed.binpb")).unwrap();
    std::fs::create_dir_all(baseline.parent().unwrap()).unwrap();
    std::fs::copy(real_baseline(), &baseline).unwrap();

    // A compatible addition: baselined, after which check reports no pending
    // additions and removing the field again is breaking.
    let added = ProtoCopy::new();
    added.edit(ADD_FIELD.0, ADD_FIELD.1, ADD_FIELD.2);
    let report = schema::baseline(&added.proto(), &baseline).unwrap();
    assert_eq!(
        report.additions,
        ["added field caseshare.v1.ReferralAccepted.team_manager (number 4)"]
    );
    assert!(report.accepted_breaking.is_empty());
    let after = schema::check_report(&added.proto(), &baseline).unwrap();
    assert!(
        after.problems().is_empty() && after.additions.is_empty(),
        "{after:#?}"
    );
    let original = repo().join(schema::PROTO_DIR);
    assert_named(
        &schema::check(&original, &baseline).unwrap(),
        "breaking: removed field caseshare.v1.ReferralAccepted.team_manager (number 4)",
        "baselined field removed",
    );

    // A breaking change is refused unless explicitly allowed.
    let before = std::fs::read(&baseline).unwrap();
    match schema::baseline(&original, &baseline) {
        Err(SchemaError::Breaking(problems)) => assert_named(
            &problems,
            "removed field caseshare.v1.ReferralAccepted.team_manager",
            "refused baseline",
        ),
        other => panic!("expected a refusal, got {other:?}"),
    }
    assert_eq!(
        std::fs::read(&baseline).unwrap(),
        before,
        "refusal wrote nothing"
    );
    let accepted = schema::baseline_allowing_breaking(&original, &baseline).unwrap();
    assert_eq!(accepted.accepted_breaking.len(), 1, "{accepted:#?}");
    assert!(schema::check(&original, &baseline).unwrap().is_empty());

    // A lint failure is refused too.
    let unlinted = ProtoCopy::new();
    unlinted.edit("events.proto", TEAM, "  string team = 3;\n");
    assert!(matches!(
        schema::baseline(&unlinted.proto(), &baseline),
        Err(SchemaError::Lint(_))
    ));

    // The baseline is byte-for-byte reproducible and ignores comments.
    let again = dir.path().join("again.binpb");
    schema::baseline(&original, &again).unwrap();
    assert_eq!(
        std::fs::read(&again).unwrap(),
        std::fs::read(real_baseline()).unwrap()
    );
    let recommented = ProtoCopy::new();
    recommented.edit(
        "events.proto",
        "// The team now responsible (e.g. `MASH`, `Assessment Team North`).",
        "// Reworded.",
    );
    let third = dir.path().join("third.binpb");
    schema::baseline(&recommented.proto(), &third).unwrap();
    assert_eq!(
        std::fs::read(&third).unwrap(),
        std::fs::read(&again).unwrap()
    );
    let decoded = prost_types::FileDescriptorSet::decode(std::fs::read(&third).unwrap().as_slice());
    assert!(decoded.is_ok());
}

// ---------------------------------------------------------------------------
// (5) every lint fires

#[test]
fn each_lint_fires_on_a_bad_edit() {
    type Apply = dyn Fn(&ProtoCopy);
    let cases: &[(&str, &Apply, &str)] = &[
        (
            "field without a comment",
            &|c| {
                c.edit("events.proto", TEAM, "  string team = 3;\n");
            },
            "lint: field caseshare.v1.ReferralAccepted.team: missing leading comment",
        ),
        (
            "message without a comment",
            &|c| {
                c.append(
                    "events.proto",
                    "\nmessage Uncommented {\n  // A field.\n  string a = 1;\n}\n",
                );
            },
            "lint: message caseshare.v1.Uncommented: missing leading comment",
        ),
        (
            "enum without a comment",
            &|c| {
                c.append(
                    "events.proto",
                    "\nenum Uncommented {\n  // Not set.\n  UNCOMMENTED_UNSPECIFIED = 0;\n}\n",
                );
            },
            "lint: enum caseshare.v1.Uncommented: missing leading comment",
        ),
        (
            "enum value without a comment",
            &|c| {
                c.edit(
                    "events.proto",
                    "  MULTIPLE_CATEGORIES = 5;\n",
                    "  MULTIPLE_CATEGORIES = 5;\n  NOT_RECORDED = 6;\n",
                );
            },
            "lint: enum value caseshare.v1.ChildProtectionCategory.NOT_RECORDED: missing leading comment",
        ),
        (
            "RPC without a comment",
            &|c| {
                c.edit(
                    "publisher.proto",
                    "  rpc RetractEvent(RetractEventRequest) returns (RetractEventResponse);\n",
                    "  rpc RetractEvent(RetractEventRequest) returns (RetractEventResponse);\n  rpc Again(RetractEventRequest) returns (RetractEventResponse);\n",
                );
            },
            "lint: RPC caseshare.v1.Publisher.Again: missing leading comment",
        ),
        (
            "service without a comment",
            &|c| {
                c.append(
                    "publisher.proto",
                    "\nservice Bare {\n  // Does a thing.\n  rpc Thing(RetractEventRequest) returns (RetractEventResponse);\n}\n",
                );
            },
            "lint: service caseshare.v1.Bare: missing leading comment",
        ),
        (
            "enum zero value not *_UNSPECIFIED",
            &|c| {
                c.append(
                    "events.proto",
                    "\n// A colour.\nenum Colour {\n  // No colour.\n  COLOUR_NONE = 0;\n  // Red.\n  RED = 1;\n}\n",
                );
            },
            "lint: enum value caseshare.v1.Colour.COLOUR_NONE: the zero value of enum caseshare.v1.Colour must be named `*_UNSPECIFIED` (e.g. `COLOUR_UNSPECIFIED`)",
        ),
        (
            "CamelCase field name",
            &|c| {
                c.edit(
                    "events.proto",
                    TEAM,
                    &format!("{TEAM}  // The team's manager.\n  string teamManager = 4;\n"),
                );
            },
            "lint: field caseshare.v1.ReferralAccepted.teamManager: name is not lower_snake_case",
        ),
    ];
    for (case, apply, expected) in cases {
        let copy = ProtoCopy::new();
        apply(&copy);
        let problems = copy.check();
        assert_eq!(
            problems,
            [expected.to_string()],
            "{case}: expected exactly this lint"
        );
    }
}

#[test]
fn unversioned_package_is_flagged() {
    let copy = ProtoCopy::new();
    for file in [
        "admin.proto",
        "audit.proto",
        "common.proto",
        "consent.proto",
        "events.proto",
        "publisher.proto",
        "subscriber.proto",
    ] {
        copy.edit(file, "package caseshare.v1;", "package caseshare;");
    }
    let problems = copy.check();
    assert_named(
        &problems,
        "lint: file caseshare/v1/events.proto: package `caseshare` is not versioned",
        "unversioned package",
    );
    assert_named(
        &problems,
        "lint: file caseshare/v1/events.proto: package `caseshare` does not match its directory (expected `caseshare.v1`)",
        "package/directory mismatch",
    );
    // Every v1 element has effectively been removed.
    assert_named(
        &problems,
        "breaking: removed message caseshare.v1.CaseEvent",
        "moved package",
    );
}

#[test]
fn a_schema_that_does_not_compile_is_an_error() {
    let copy = ProtoCopy::new();
    copy.edit("events.proto", "string team = 3;", "NoSuchType team = 3;");
    let err = schema::check(&copy.proto(), &real_baseline()).unwrap_err();
    assert!(matches!(err, SchemaError::Compile(_)), "{err}");
    assert!(err.to_string().contains("events.proto"), "{err}");
}
