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

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

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
    buckets: Arc<Mutex<HashMap<String, (f64, Instant)>>>,
}

/// The hash a token is stored as: blake3, hex.
pub fn token_hash(token: &str) -> String {
    blake3::hash(token.as_bytes()).to_hex().to_string()
}

/// Why a call is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Denied {
    /// The caller is not known: no, malformed or unknown credentials.
    #[error("{0}")]
    Unauthenticated(String),
    /// The caller may not make this call or touch this dataset.
    #[error("{0}")]
    NotAllowed(String),
    /// The caller exceeds its calls per second.
    #[error("{0}")]
    OverRate(String),
}

impl Auth {
    /// Principals of a configuration.
    pub fn new(principals: Vec<Principal>) -> Auth {
        Auth {
            principals,
            buckets: Default::default(),
        }
    }

    /// The principal holding the bearer `token`.
    pub fn by_token(&self, token: &str) -> Result<&Principal, Denied> {
        let hash = token_hash(token);
        self.principals
            .iter()
            .find(|p| p.token_blake3.as_deref() == Some(hash.as_str()))
            .ok_or_else(|| Denied::Unauthenticated("unknown token".into()))
    }

    /// The principal a client certificate with common name `cn` names.
    pub fn by_cert_cn(&self, cn: &str) -> Option<&Principal> {
        self.principals
            .iter()
            .find(|p| p.cert_cn.as_deref() == Some(cn))
    }

    /// Admits `principal`'s call of `call` on `dataset` (empty: none) or
    /// says why not; `Ok` is the principal's name.
    pub fn admit(
        &self,
        principal: &Principal,
        call: &str,
        dataset: &str,
    ) -> Result<String, Denied> {
        let allowed = principal.roles.contains(&Role::Admin)
            || required_role(call).is_some_and(|r| principal.roles.contains(&r));
        if !allowed {
            return Err(Denied::NotAllowed(format!(
                "{} may not call {call}",
                principal.name
            )));
        }
        if !dataset.is_empty()
            && let Some(scope) = &principal.datasets
            && !scope.iter().any(|d| d == dataset)
        {
            return Err(Denied::NotAllowed(format!(
                "{} may not touch dataset {dataset:?}",
                principal.name
            )));
        }
        if let Some(rate) = principal.max_calls_per_sec {
            let rate = f64::from(rate.max(1));
            let mut buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
            let now = Instant::now();
            let (tokens, at) = buckets.entry(principal.name.clone()).or_insert((rate, now));
            *tokens = (*tokens + now.duration_since(*at).as_secs_f64() * rate).min(rate);
            *at = now;
            if *tokens < 1.0 {
                return Err(Denied::OverRate(format!(
                    "{} exceeds its {rate} calls per second",
                    principal.name
                )));
            }
            *tokens -= 1.0;
        }
        Ok(principal.name.clone())
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

    #[test]
    fn roles_and_datasets_decide() {
        let a = auth();
        let p = a.by_token("s3cret").unwrap();
        assert_eq!(
            a.admit(p, "AuditService/Compare", "customers").unwrap(),
            "nightly"
        );
        assert!(matches!(
            a.by_token("nope"),
            Err(Denied::Unauthenticated(_))
        ));
        assert!(matches!(
            a.admit(p, "RepairService/ApplyChanges", "customers"),
            Err(Denied::NotAllowed(_))
        ));
        assert!(matches!(
            a.admit(p, "AuditService/Compare", "orders"),
            Err(Denied::NotAllowed(_))
        ));
    }

    #[test]
    fn a_principal_over_its_rate_is_refused_until_tokens_refill() {
        let mut a = auth();
        a.principals[0].max_calls_per_sec = Some(3);
        let p = a.principals[0].clone();
        let call = || a.admit(&p, "AuditService/Compare", "customers");
        for _ in 0..3 {
            assert!(call().is_ok());
        }
        assert!(matches!(call(), Err(Denied::OverRate(_))));
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
