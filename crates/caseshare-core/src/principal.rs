//! Principals: who is calling, read from the client certificate's SPIFFE URI
//! SAN (`spiffe://<trust-domain>/agency/<id>`, `/auditor/<name>`,
//! `/admin/<name>`).

use std::fmt;

/// The role a principal acts in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Role {
    /// An agency system: publishes as itself, consumes its own subscriptions,
    /// records consent.
    Agency,
    /// An auditor: reads the audit service only.
    Auditor,
    /// An administrator: registers agencies and loads agreements.
    Admin,
}

impl Role {
    /// The path segment that names the role in a SPIFFE id.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Agency => "agency",
            Role::Auditor => "auditor",
            Role::Admin => "admin",
        }
    }

    /// Every role.
    pub const ALL: [Role; 3] = [Role::Agency, Role::Auditor, Role::Admin];
}

/// An authenticated caller.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Principal {
    /// The role.
    pub role: Role,
    /// The agency id, auditor name or admin name.
    pub name: String,
    /// The trust domain the certificate was issued in.
    pub trust_domain: String,
}

impl Principal {
    /// The SPIFFE id, as written in audit entries.
    pub fn spiffe_id(&self) -> String {
        let role = self.role.as_str();
        // Built at its exact length (`format!` would grow it twice): it
        // is written into every audit entry an agency's request makes.
        let mut id = String::with_capacity(
            "spiffe://".len() + self.trust_domain.len() + 1 + role.len() + 1 + self.name.len(),
        );
        for part in ["spiffe://", &self.trust_domain, "/", role, "/", &self.name] {
            id.push_str(part);
        }
        id
    }

    /// The agency id when the principal is an agency.
    pub fn agency_id(&self) -> Option<&str> {
        (self.role == Role::Agency).then_some(self.name.as_str())
    }
}

impl fmt::Display for Principal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.spiffe_id())
    }
}

/// Why a SPIFFE id does not name a principal.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PrincipalError {
    /// Not `spiffe://…`.
    #[error("the certificate's URI SAN is not a spiffe:// id")]
    NotSpiffe,
    /// Issued for another trust domain.
    #[error("the certificate belongs to trust domain {0:?}, not this broker's")]
    WrongTrustDomain(String),
    /// The path is not `/<role>/<name>`.
    #[error("the SPIFFE path must be /agency/<id>, /auditor/<name> or /admin/<name>")]
    Path,
}

/// True for names of 1–64 characters of `[a-z0-9-]` starting with a letter.
pub fn is_valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.as_bytes()[0].is_ascii_lowercase()
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

/// Parses a SPIFFE id, requiring the given trust domain.
pub fn parse_spiffe_id(uri: &str, trust_domain: &str) -> Result<Principal, PrincipalError> {
    let rest = uri
        .strip_prefix("spiffe://")
        .ok_or(PrincipalError::NotSpiffe)?;
    let (domain, path) = rest.split_once('/').ok_or(PrincipalError::Path)?;
    if domain != trust_domain {
        return Err(PrincipalError::WrongTrustDomain(domain.to_string()));
    }
    let (role, name) = path.split_once('/').ok_or(PrincipalError::Path)?;
    let role = match role {
        "agency" => Role::Agency,
        "auditor" => Role::Auditor,
        "admin" => Role::Admin,
        _ => return Err(PrincipalError::Path),
    };
    if !is_valid_name(name) {
        return Err(PrincipalError::Path);
    }
    Ok(Principal {
        role,
        name: name.to_string(),
        trust_domain: domain.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table() {
        let td = "caseshare.local";
        let ok = parse_spiffe_id("spiffe://caseshare.local/agency/school-b", td);
        assert_eq!(
            ok.as_ref().map(|p| (p.role, p.name.as_str())),
            Ok((Role::Agency, "school-b"))
        );
        assert_eq!(
            ok.map(|p| p.spiffe_id()).as_deref(),
            Ok("spiffe://caseshare.local/agency/school-b")
        );
        let bad = [
            (
                "https://caseshare.local/agency/a",
                PrincipalError::NotSpiffe,
            ),
            (
                "spiffe://evil.local/agency/a",
                PrincipalError::WrongTrustDomain("evil.local".into()),
            ),
            ("spiffe://caseshare.local/root/a", PrincipalError::Path),
            ("spiffe://caseshare.local/agency/", PrincipalError::Path),
            ("spiffe://caseshare.local/agency/A", PrincipalError::Path),
            ("spiffe://caseshare.local/agency/a/b", PrincipalError::Path),
            ("spiffe://caseshare.local", PrincipalError::Path),
        ];
        for (uri, want) in bad {
            assert_eq!(parse_spiffe_id(uri, td), Err(want), "{uri}");
        }
    }
}
