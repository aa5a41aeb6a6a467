//! Who may call what: principals (a client certificate's common name under
//! mutual TLS, or a bearer token stored as its blake3 hash) hold roles, and
//! every RPC needs one role. Default deny: with `[agent.auth]` on, a call
//! without credentials is `Unauthenticated`, a call whose principal lacks
//! the role (or the dataset) is `PermissionDenied`.
//!
//! | role | RPCs |
//! |---|---|
//! | `peer` | AgentService (hash exchange between agents) |
//! | `auditor` | GetRun, ListRuns, StreamDrift, GetIndexStatus, ListSyncJobs, ListSyncRuns, ListConflicts |
//! | `operator` | Compare, Reindex, Verify, RunSyncJob, IngestChanges |
//! | `repairer` | FetchRecords, ApplyChanges, Reconcile, ResolveConflict, QueueConflicts |
//! | `admin` | every RPC |

use tonic::{Request, Status};

/// A role a principal holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Agents exchanging hashes.
    Peer,
    /// Reads reports and state.
    Auditor,
    /// Runs compares, reindexes, ingests, triggers jobs.
    Operator,
    /// Reads values and writes repairs.
    Repairer,
    /// Everything.
    Admin,
}

impl Role {
    /// Parses a role name.
    pub fn parse(s: &str) -> Result<Role, String> {
        Ok(match s {
            "peer" => Role::Peer,
            "auditor" => Role::Auditor,
            "operator" => Role::Operator,
            "repairer" => Role::Repairer,
            "admin" => Role::Admin,
            other => {
                return Err(format!(
                    "{other:?} is not a role (peer, auditor, operator, repairer, admin)"
                ));
            }
        })
    }
}

/// The role an RPC (`Service/Method`) needs; `None` for a call no role
/// opens (then only admin may call it).
pub fn required_role(call: &str) -> Option<Role> {
    let method = call.rsplit('/').next().unwrap_or(call);
    if call.starts_with("AgentService/") {
        return Some(Role::Peer);
    }
    Some(match method {
        "GetRun" | "ListRuns" | "StreamDrift" | "GetIndexStatus" | "ListSyncJobs"
        | "ListSyncRuns" | "ListConflicts" => Role::Auditor,
        "Compare" | "Reindex" | "Verify" | "RunSyncJob" | "IngestChanges" => Role::Operator,
        "FetchRecords" | "ApplyChanges" | "Reconcile" | "ResolveConflict" | "QueueConflicts" => {
            Role::Repairer
        }
        _ => return None,
    })
}

/// Whether a call writes into a system or an index, or hands out values:
/// without `[agent.auth]` such calls need `insecure = true`.
pub fn writes_or_reveals(call: &str) -> bool {
    let method = call.rsplit('/').next().unwrap_or(call);
    matches!(required_role(call), Some(Role::Repairer) | None)
        || matches!(method, "IngestChanges" | "Reindex" | "RunSyncJob")
}

/// The datasets a call may touch, put into the request by the agent's
/// AgentService interceptor: the dataset is named inside the message, which
/// an interceptor cannot read, so the service checks it with [`Self::admit`].
#[derive(Debug, Clone)]
pub struct DatasetScope(pub Vec<String>);

impl DatasetScope {
    /// Refuses a call on `dataset` outside the scope `request` carries.
    pub fn admit<T>(request: &Request<T>, dataset: &str) -> Result<(), Status> {
        match request.extensions().get::<DatasetScope>() {
            Some(scope) if !scope.0.iter().any(|d| d == dataset) => Err(Status::permission_denied(
                format!("the caller may not touch dataset {dataset:?}"),
            )),
            _ => Ok(()),
        }
    }
}

/// Someone who may call: how they are recognised and what they may do.
#[derive(Debug, Clone)]
pub struct Principal {
    /// Name, for the audit log.
    pub name: String,
    /// Common name of their client certificate (mutual TLS).
    pub cert_cn: Option<String>,
    /// blake3 of their bearer token, hex.
    pub token_blake3: Option<String>,
    /// Their roles.
    pub roles: Vec<Role>,
    /// The datasets they may touch; `None`: all.
    pub datasets: Option<Vec<String>>,
    /// Calls per second they may make (a burst of as many); `None`: no limit.
    pub max_calls_per_sec: Option<u32>,
}

/// The principals of an agent.
#[derive(Debug, Clone, Default)]
pub struct Auth {
    /// Everyone known.
    pub principals: Vec<Principal>,
    /// Per principal: tokens left and when they were counted.
    buckets: std::sync::Arc<
        std::sync::Mutex<std::collections::HashMap<String, (f64, std::time::Instant)>>,
    >,
}

/// The hash a token is stored as: blake3, hex.
pub fn token_hash(token: &str) -> String {
    blake3::hash(token.as_bytes()).to_hex().to_string()
}

/// The common names of a request's client certificate chain's leaf.
fn client_cn<T>(request: &Request<T>) -> Option<String> {
    let certs = request.peer_certs()?;
    let leaf = certs.first()?;
    let (_, cert) = x509_parser::parse_x509_certificate(leaf.as_ref()).ok()?;
    cert.subject()
        .iter_common_name()
        .next()
        .and_then(|cn| cn.as_str().ok())
        .map(str::to_owned)
}

impl Auth {
    /// Who is calling, if anyone known: a bearer token first, then the
    /// client certificate.
    pub fn identify<T>(&self, request: &Request<T>) -> Result<Option<&Principal>, Status> {
        if let Some(value) = request.metadata().get("authorization") {
            let text = value
                .to_str()
                .map_err(|_| Status::unauthenticated("the authorization header is not text"))?;
            let token = text.strip_prefix("Bearer ").ok_or_else(|| {
                Status::unauthenticated("the authorization header is not 'Bearer <token>'")
            })?;
            let hash = token_hash(token);
            return match self
                .principals
                .iter()
                .find(|p| p.token_blake3.as_deref() == Some(hash.as_str()))
            {
                Some(p) => Ok(Some(p)),
                None => Err(Status::unauthenticated("unknown token")),
            };
        }
        Ok(client_cn(request).and_then(|cn| {
            self.principals
                .iter()
                .find(|p| p.cert_cn.as_deref() == Some(cn.as_str()))
        }))
    }

    /// The datasets the caller of `request` is limited to, if it is.
    pub fn scope_of<T>(&self, request: &Request<T>) -> Option<DatasetScope> {
        let principal = self.identify(request).ok()??;
        principal.datasets.clone().map(DatasetScope)
    }

    /// Admits a call or says why not; `Ok` is the principal's name.
    pub fn check<T>(
        &self,
        request: &Request<T>,
        call: &str,
        dataset: &str,
    ) -> Result<String, Status> {
        let principal = self.identify(request)?.ok_or_else(|| {
            Status::unauthenticated(format!(
                "{call} needs credentials: a client certificate or a bearer token"
            ))
        })?;
        let allowed = principal.roles.contains(&Role::Admin)
            || required_role(call).is_some_and(|r| principal.roles.contains(&r));
        if !allowed {
            return Err(Status::permission_denied(format!(
                "{} may not call {call}",
                principal.name
            )));
        }
        if !dataset.is_empty()
            && let Some(scope) = &principal.datasets
            && !scope.iter().any(|d| d == dataset)
        {
            return Err(Status::permission_denied(format!(
                "{} may not touch dataset {dataset:?}",
                principal.name
            )));
        }
        if let Some(rate) = principal.max_calls_per_sec {
            let rate = f64::from(rate.max(1));
            let mut buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
            let now = std::time::Instant::now();
            let (tokens, at) = buckets.entry(principal.name.clone()).or_insert((rate, now));
            *tokens = (*tokens + now.duration_since(*at).as_secs_f64() * rate).min(rate);
            *at = now;
            if *tokens < 1.0 {
                return Err(Status::resource_exhausted(format!(
                    "{} exceeds its {rate} calls per second",
                    principal.name
                )));
            }
            *tokens -= 1.0;
        }
        Ok(principal.name.clone())
    }

    /// Principals of a configuration.
    pub fn new(principals: Vec<Principal>) -> Auth {
        Auth {
            principals,
            buckets: Default::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn auth() -> Auth {
        Auth::new(vec![Principal {
            name: "nightly".into(),
            cert_cn: None,
            token_blake3: Some(token_hash("s3cret")),
            roles: vec![Role::Operator],
            datasets: Some(vec!["customers".into()]),
            max_calls_per_sec: None,
        }])
    }

    fn with_token(token: Option<&str>) -> Request<()> {
        let mut r = Request::new(());
        if let Some(t) = token {
            r.metadata_mut()
                .insert("authorization", format!("Bearer {t}").parse().unwrap());
        }
        r
    }

    #[test]
    fn roles_datasets_and_credentials_decide() {
        let a = auth();
        assert_eq!(
            a.check(
                &with_token(Some("s3cret")),
                "AuditService/Compare",
                "customers"
            )
            .unwrap(),
            "nightly"
        );
        let code = |r: Result<String, Status>| r.unwrap_err().code();
        assert_eq!(
            code(a.check(&with_token(None), "AuditService/Compare", "customers")),
            tonic::Code::Unauthenticated
        );
        assert_eq!(
            code(a.check(
                &with_token(Some("nope")),
                "AuditService/Compare",
                "customers"
            )),
            tonic::Code::Unauthenticated
        );
        assert_eq!(
            code(a.check(
                &with_token(Some("s3cret")),
                "RepairService/ApplyChanges",
                "customers"
            )),
            tonic::Code::PermissionDenied
        );
        assert_eq!(
            code(a.check(
                &with_token(Some("s3cret")),
                "AuditService/Compare",
                "orders"
            )),
            tonic::Code::PermissionDenied
        );
    }

    #[test]
    fn a_principal_over_its_rate_is_refused_until_tokens_refill() {
        let mut a = auth();
        a.principals[0].max_calls_per_sec = Some(3);
        let call = || {
            a.check(
                &with_token(Some("s3cret")),
                "AuditService/Compare",
                "customers",
            )
        };
        for _ in 0..3 {
            assert!(call().is_ok());
        }
        assert_eq!(call().unwrap_err().code(), tonic::Code::ResourceExhausted);
        std::thread::sleep(std::time::Duration::from_millis(400));
        assert!(
            call().is_ok(),
            "a token came back after a third of a second"
        );
    }

    #[test]
    fn every_call_has_a_role_but_unknown_ones() {
        assert_eq!(required_role("AgentService/GetNodes"), Some(Role::Peer));
        assert_eq!(
            required_role("AuditService/StreamDrift"),
            Some(Role::Auditor)
        );
        assert_eq!(
            required_role("IngestService/IngestChanges"),
            Some(Role::Operator)
        );
        assert_eq!(
            required_role("RepairService/FetchRecords"),
            Some(Role::Repairer)
        );
        assert_eq!(required_role("AdminService/Nonsense"), None);
    }
}
