//! The authorisation table: for every gRPC method, which roles may call it
//! and what ownership rule applies on top. The server enforces it in one
//! layer; tests read it to check every RPC is listed.

use crate::principal::Role;

/// What, beyond the role, restricts a call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ownership {
    /// No further restriction.
    None,
    /// Acts only as, or on resources owned by, the caller's own agency.
    OwnAgency,
}

/// One row of the table.
#[derive(Debug, Clone, Copy)]
pub struct Rule {
    /// The full gRPC method path, `/package.Service/Method`.
    pub method: &'static str,
    /// Roles allowed to call it.
    pub roles: &'static [Role],
    /// The ownership rule the service applies.
    pub ownership: Ownership,
}

const AGENCY: &[Role] = &[Role::Agency];
const AUDITOR: &[Role] = &[Role::Auditor];
const ADMIN: &[Role] = &[Role::Admin];
const ADMIN_AUDITOR: &[Role] = &[Role::Admin, Role::Auditor];
const ANY: &[Role] = &[Role::Agency, Role::Auditor, Role::Admin];

macro_rules! rules {
    ($( $svc:literal / $m:literal => $roles:expr, $own:ident; )*) => {
        &[ $( Rule { method: concat!("/", $svc, "/", $m), roles: $roles, ownership: Ownership::$own }, )* ]
    };
}

/// Every method the broker serves.
pub const TABLE: &[Rule] = rules! {
    "caseshare.v1.Publisher"/"Publish" => AGENCY, OwnAgency;
    "caseshare.v1.Publisher"/"PublishStream" => AGENCY, OwnAgency;
    "caseshare.v1.Publisher"/"GetEventStatus" => AGENCY, OwnAgency;
    "caseshare.v1.Publisher"/"RetractEvent" => AGENCY, OwnAgency;
    "caseshare.v1.Subscriber"/"CreateSubscription" => AGENCY, OwnAgency;
    "caseshare.v1.Subscriber"/"GetSubscription" => AGENCY, OwnAgency;
    "caseshare.v1.Subscriber"/"ListSubscriptions" => AGENCY, OwnAgency;
    "caseshare.v1.Subscriber"/"DeleteSubscription" => AGENCY, OwnAgency;
    "caseshare.v1.Subscriber"/"Subscribe" => AGENCY, OwnAgency;
    "caseshare.v1.Subscriber"/"Ack" => AGENCY, OwnAgency;
    "caseshare.v1.Subscriber"/"Nack" => AGENCY, OwnAgency;
    "caseshare.v1.Subscriber"/"Seek" => AGENCY, OwnAgency;
    "caseshare.v1.Subscriber"/"ListDeadLetters" => AGENCY, OwnAgency;
    "caseshare.v1.Subscriber"/"ReplayDeadLetters" => AGENCY, OwnAgency;
    "caseshare.v1.Consent"/"RecordConsent" => AGENCY, OwnAgency;
    "caseshare.v1.Consent"/"WithdrawConsent" => AGENCY, OwnAgency;
    "caseshare.v1.Consent"/"ListConsents" => AGENCY, None;
    "caseshare.v1.Admin"/"RegisterAgency" => ADMIN, None;
    "caseshare.v1.Admin"/"ListAgencies" => ADMIN_AUDITOR, None;
    "caseshare.v1.Admin"/"PutAgreement" => ADMIN, None;
    "caseshare.v1.Admin"/"EndAgreement" => ADMIN, None;
    "caseshare.v1.Admin"/"ListAgreements" => ADMIN_AUDITOR, None;
    "caseshare.v1.Admin"/"GetStatus" => ADMIN, None;
    "caseshare.v1.Admin"/"Backup" => ADMIN, None;
    "caseshare.v1.Audit"/"Query" => AUDITOR, None;
    "caseshare.v1.Audit"/"GetCheckpoint" => AUDITOR, None;
    "caseshare.v1.Audit"/"GetInclusionProof" => AUDITOR, None;
    "caseshare.v1.Audit"/"GetConsistencyProof" => AUDITOR, None;
    "caseshare.v1.Audit"/"GetEntries" => AUDITOR, None;
    "caseshare.v1.Audit"/"SubjectAccessReport" => AUDITOR, None;
    "grpc.health.v1.Health"/"Check" => ANY, None;
    "grpc.health.v1.Health"/"Watch" => ANY, None;
    "grpc.reflection.v1.ServerReflection"/"ServerReflectionInfo" => ANY, None;
    "grpc.reflection.v1alpha.ServerReflection"/"ServerReflectionInfo" => ANY, None;
};

/// The outcome of looking a call up in the table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// The role may call the method (ownership still applies).
    Allowed(Ownership),
    /// The role may not call the method.
    Denied,
    /// The method is not in the table: refused, whoever calls.
    UnknownMethod,
}

/// The table's row for a method path, if it is one the broker serves.
/// Callers that record a refusal use `rule.method` (a `&'static str`), never
/// the client's text.
pub fn rule(method: &str) -> Option<&'static Rule> {
    TABLE.iter().find(|r| r.method == method)
}

/// The rate-limit family of a method: each has its own per-principal token
/// bucket. Health and reflection have none.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Family {
    /// `caseshare.v1.Publisher`.
    Publish,
    /// `caseshare.v1.Subscriber` (subscription management, streams, acks).
    Subscribe,
    /// `caseshare.v1.Consent`.
    Consent,
    /// `caseshare.v1.Admin`.
    Admin,
    /// `caseshare.v1.Audit`.
    Audit,
}

impl Family {
    /// Every family.
    pub const ALL: [Family; 5] = [
        Family::Publish,
        Family::Subscribe,
        Family::Consent,
        Family::Admin,
        Family::Audit,
    ];

    /// The family's name, as used in config keys (`limits.<name>_rate_per_sec`).
    pub fn as_str(self) -> &'static str {
        match self {
            Family::Publish => "publish",
            Family::Subscribe => "subscribe",
            Family::Consent => "consent",
            Family::Admin => "admin",
            Family::Audit => "audit",
        }
    }
}

/// The family a method path belongs to.
pub fn family(method: &str) -> Option<Family> {
    let service = method.strip_prefix('/')?.split('/').next()?;
    match service {
        "caseshare.v1.Publisher" => Some(Family::Publish),
        "caseshare.v1.Subscriber" => Some(Family::Subscribe),
        "caseshare.v1.Consent" => Some(Family::Consent),
        "caseshare.v1.Admin" => Some(Family::Admin),
        "caseshare.v1.Audit" => Some(Family::Audit),
        _ => None,
    }
}

/// Looks a method path up for a role.
pub fn check(role: Role, method: &str) -> Verdict {
    match TABLE.iter().find(|r| r.method == method) {
        Some(rule) if rule.roles.contains(&role) => Verdict::Allowed(rule.ownership),
        Some(_) => Verdict::Denied,
        None => Verdict::UnknownMethod,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_are_least_privilege() {
        assert_eq!(
            check(Role::Agency, "/caseshare.v1.Publisher/Publish"),
            Verdict::Allowed(Ownership::OwnAgency)
        );
        assert_eq!(
            check(Role::Auditor, "/caseshare.v1.Publisher/Publish"),
            Verdict::Denied
        );
        assert_eq!(
            check(Role::Admin, "/caseshare.v1.Subscriber/Subscribe"),
            Verdict::Denied
        );
        assert_eq!(
            check(Role::Agency, "/caseshare.v1.Admin/RegisterAgency"),
            Verdict::Denied
        );
        assert_eq!(
            check(Role::Agency, "/caseshare.v1.Audit/Query"),
            Verdict::Denied
        );
        assert_eq!(
            check(Role::Admin, "/caseshare.v1.Audit/Query"),
            Verdict::Denied
        );
        for role in [Role::Agency, Role::Auditor] {
            assert_eq!(
                check(role, "/caseshare.v1.Admin/GetStatus"),
                Verdict::Denied
            );
        }
        assert_eq!(
            check(Role::Admin, "/caseshare.v1.Admin/GetStatus"),
            Verdict::Allowed(Ownership::None)
        );
        assert_eq!(
            check(Role::Auditor, "/caseshare.v1.Audit/Query"),
            Verdict::Allowed(Ownership::None)
        );
        assert_eq!(check(Role::Admin, "/x.Y/Z"), Verdict::UnknownMethod);
    }

    #[test]
    fn every_caseshare_method_has_a_family() {
        for r in TABLE {
            let f = family(r.method);
            assert_eq!(
                f.is_some(),
                r.method.starts_with("/caseshare.v1."),
                "{}",
                r.method
            );
            assert_eq!(rule(r.method).map(|x| x.method), Some(r.method));
        }
        assert_eq!(family("/x.Y/Z"), None);
        assert!(rule("/caseshare.v1.Publisher/Publish2").is_none());
    }

    #[test]
    fn admins_and_auditors_never_receive_payloads() {
        for m in [
            "/caseshare.v1.Subscriber/Subscribe",
            "/caseshare.v1.Publisher/Publish",
        ] {
            for role in [Role::Admin, Role::Auditor] {
                assert_eq!(check(role, m), Verdict::Denied, "{role:?} {m}");
            }
        }
    }

    #[test]
    fn every_rpc_in_the_compiled_schema_is_in_the_table() {
        use prost::Message;
        let fds = prost_types::FileDescriptorSet::decode(caseshare_proto::FILE_DESCRIPTOR_SET)
            .unwrap_or_default();
        let mut count = 0;
        for file in fds.file.iter().filter(|f| f.package() == "caseshare.v1") {
            for svc in &file.service {
                for m in &svc.method {
                    let path = format!("/caseshare.v1.{}/{}", svc.name(), m.name());
                    assert!(
                        TABLE.iter().any(|r| r.method == path),
                        "{path} missing from authz::TABLE"
                    );
                    count += 1;
                }
            }
        }
        assert!(count >= 28, "found only {count} RPCs in the descriptor set");
    }
}
