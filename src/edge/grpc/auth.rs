//! The per-integration API key check. Callers send `authorization: Bearer <api key>`;
//! every configured key is compared in constant time (all of them, whatever matches), so
//! neither timing nor the answer tells which integrations exist to a caller without a
//! valid key.

use crate::config::PeerIdentity;
use crate::intake::{IntegrationRuntime, Integrations};
use std::sync::Arc;
use subtle::ConstantTimeEq;
use tonic::metadata::MetadataMap;
use tonic::Status;

/// What a call presented: its bearer token, taken once from its metadata (never logged),
/// and the names of its verified client certificate, if its connection had one.
pub(crate) struct Credentials {
    token: Option<String>,
    peer: Option<Arc<PeerIdentity>>,
}

impl Credentials {
    /// Reads `authorization: Bearer <token>` (the scheme in any case, as RFC 9110 says).
    pub(crate) fn from_metadata(metadata: &MetadataMap) -> Self {
        let token = metadata
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split_once(' '))
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
            .map(|(_, token)| token.trim().to_string())
            .filter(|t| !t.is_empty());
        Credentials { token, peer: None }
    }

    /// The credentials of a call: its metadata and its connection's client certificate.
    pub(crate) fn of<T>(request: &tonic::Request<T>) -> Self {
        let mut creds = Self::from_metadata(request.metadata());
        creds.peer = request
            .extensions()
            .get::<super::tls::ConnInfo>()
            .and_then(|c| c.peer.clone());
        creds
    }

    /// The integrations these credentials authenticate (one, unless operators shared a
    /// key or a certificate name).
    fn matches<'a>(&self, integrations: &'a Integrations) -> Vec<&'a IntegrationRuntime> {
        let peer = self.peer.as_deref();
        // No early exit: every key is compared, so the time taken does not depend on
        // which (if any) matched.
        let mut found = Vec::new();
        for rt in integrations.values() {
            let key = rt.api_key.expose().as_bytes();
            let equal: bool = match &self.token {
                Some(token) => token.as_bytes().ct_eq(key).into(),
                None => false,
            };
            if (equal && !key.is_empty()) || rt.cert_admits(peer) {
                found.push(rt);
            }
        }
        found
    }

    /// The answer to a call whose key is missing or matches no integration.
    pub(crate) fn refusal(&self) -> Status {
        match self.token {
            None => unauthenticated(),
            Some(_) => Status::unauthenticated(
                "the API key in `authorization: Bearer` is not valid (it is no integration's key)",
            ),
        }
    }

    /// True when the key belongs to some integration.
    pub(crate) fn is_known(&self, integrations: &Integrations) -> bool {
        !self.matches(integrations).is_empty()
    }

    /// The integration `name` if this key may use it.
    ///
    /// No valid key: UNAUTHENTICATED (whatever `name` is, so the answer does not reveal
    /// which integrations exist). A valid key and an unknown `name`: NOT_FOUND. A key of
    /// another integration: PERMISSION_DENIED.
    pub(crate) fn authorize<'a>(
        &self,
        integrations: &'a Integrations,
        name: &str,
    ) -> Result<&'a IntegrationRuntime, Status> {
        if let Some(why) = integrations
            .get(name)
            .and_then(|rt| rt.cert_mismatch(self.peer.as_deref()))
        {
            tracing::warn!(integration = %name, reason = %why, "gRPC call refused");
            return Err(Status::permission_denied(why));
        }
        let matched = self.matches(integrations);
        if matched.is_empty() {
            return Err(self.refusal());
        }
        if let Some(rt) = matched.into_iter().find(|rt| rt.name == name) {
            return Ok(rt);
        }
        if integrations.contains_key(name) {
            Err(Status::permission_denied(format!(
                "these credentials (API key or client certificate) are not valid for integration {name:?}"
            )))
        } else {
            Err(Status::not_found(format!(
                "no integration {}",
                super::error::quoted(name)
            )))
        }
    }
}

/// The answer to a call without a valid key.
pub(crate) fn unauthenticated() -> Status {
    Status::unauthenticated("send `authorization: Bearer <the integration's API key>` metadata")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Secret;
    use crate::mapping::MappingPlan;
    use std::collections::HashMap;
    use std::sync::Arc;
    use tonic::Code;

    fn integrations() -> Integrations {
        let plan = Arc::new(
            MappingPlan::from_str(
                r#"version = 1
source = "fields"
[dispatch.IncidentReference]
path = "reference"
[dispatch.DeviceId]
path = "device"
[dispatch.ContactName]
path = "name"
[dispatch.ContactNumber]
path = "phone"
[dispatch.Subject]
path = "subject"
[dispatch.Description]
path = "description"
[dispatch.FaultDateTime]
path = "fault_time"
"#,
                "test",
            )
            .expect("test mapping compiles"),
        );
        let rt = |name: &str, key: &str| IntegrationRuntime {
            name: name.into(),
            customer_number: "A1".into(),
            api_key: Secret::new(key),
            client_cert: None,
            plan: plan.clone(),
            mapping_version: "test".into(),
        };
        Arc::new(HashMap::from([
            ("a".to_string(), rt("a", "key-a")),
            ("b".to_string(), rt("b", "key-b")),
        ]))
    }

    fn creds(value: Option<&str>) -> Credentials {
        let mut md = MetadataMap::new();
        if let Some(v) = value {
            md.insert("authorization", v.parse().unwrap());
        }
        Credentials::from_metadata(&md)
    }

    fn code(r: Result<&IntegrationRuntime, Status>) -> Code {
        r.map(|_| Code::Ok).unwrap_or_else(|s| s.code())
    }

    #[test]
    fn each_case_has_its_code() {
        let i = integrations();
        assert_eq!(
            code(creds(Some("Bearer key-a")).authorize(&i, "a")),
            Code::Ok
        );
        assert_eq!(
            code(creds(Some("bearer key-a")).authorize(&i, "a")),
            Code::Ok
        );
        assert_eq!(
            code(creds(Some("Bearer key-b")).authorize(&i, "a")),
            Code::PermissionDenied
        );
        assert_eq!(
            code(creds(Some("Bearer key-a")).authorize(&i, "zz")),
            Code::NotFound
        );
        assert_eq!(
            code(creds(Some("Bearer nope")).authorize(&i, "a")),
            Code::Unauthenticated
        );
        assert_eq!(
            code(creds(Some("Bearer nope")).authorize(&i, "zz")),
            Code::Unauthenticated
        );
        assert_eq!(
            code(creds(Some("Basic key-a")).authorize(&i, "a")),
            Code::Unauthenticated
        );
        assert_eq!(
            code(creds(Some("key-a")).authorize(&i, "a")),
            Code::Unauthenticated
        );
        assert_eq!(
            code(creds(Some("Bearer ")).authorize(&i, "a")),
            Code::Unauthenticated
        );
        assert_eq!(code(creds(None).authorize(&i, "a")), Code::Unauthenticated);
        assert!(creds(Some("Bearer key-b")).is_known(&i));
        assert!(!creds(Some("Bearer key-")).is_known(&i));
    }
}
