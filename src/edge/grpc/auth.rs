//! The per-integration API key check. Callers send `authorization: Bearer <api key>`;
//! every configured key is compared in constant time (all of them, whatever matches), so
//! neither timing nor the answer tells which integrations exist to a caller without a
//! valid key.

use crate::intake::{IntegrationRuntime, Integrations};
use subtle::ConstantTimeEq;
use tonic::metadata::MetadataMap;
use tonic::Status;

/// The bearer token a call presented, taken once from its metadata. Never logged.
pub(crate) struct Credentials(Option<String>);

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
        Credentials(token)
    }

    /// The integrations whose key this is (one, unless operators shared a key).
    fn matches<'a>(&self, integrations: &'a Integrations) -> Vec<&'a IntegrationRuntime> {
        let Some(token) = &self.0 else {
            return Vec::new();
        };
        // No early exit: every key is compared, so the time taken does not depend on
        // which (if any) matched.
        let mut found = Vec::new();
        for rt in integrations.values() {
            let key = rt.api_key.expose().as_bytes();
            let equal: bool = token.as_bytes().ct_eq(key).into();
            if equal && !key.is_empty() {
                found.push(rt);
            }
        }
        found
    }

    /// The answer to a call whose key is missing or matches no integration.
    pub(crate) fn refusal(&self) -> Status {
        match self.0 {
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
        let matched = self.matches(integrations);
        if matched.is_empty() {
            return Err(self.refusal());
        }
        if let Some(rt) = matched.into_iter().find(|rt| rt.name == name) {
            return Ok(rt);
        }
        if integrations.contains_key(name) {
            Err(Status::permission_denied(format!(
                "this API key is not valid for integration {name:?}"
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
            plan: plan.clone(),
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
