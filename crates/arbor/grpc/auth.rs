//! The gRPC edge of access control: who a request comes from (a bearer
//! token, else the client certificate's common name), checked against the
//! principals and roles of [`arbor_agent::access`].

use arbor_agent::access::{Auth, Denied, Principal};
use tonic::{Request, Status};

pub use arbor_agent::access::{Role, required_role, token_hash, writes_or_reveals};

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

/// Who is calling, if anyone known: a bearer token first, then the client
/// certificate.
pub fn identify<'a, T>(
    auth: &'a Auth,
    request: &Request<T>,
) -> Result<Option<&'a Principal>, Status> {
    if let Some(value) = request.metadata().get("authorization") {
        let text = value
            .to_str()
            .map_err(|_| Status::unauthenticated("the authorization header is not text"))?;
        let token = text.strip_prefix("Bearer ").ok_or_else(|| {
            Status::unauthenticated("the authorization header is not 'Bearer <token>'")
        })?;
        return auth
            .by_token(token)
            .map(Some)
            .map_err(crate::grpc::status::denied);
    }
    Ok(client_cn(request).and_then(|cn| auth.by_cert_cn(&cn)))
}

/// Admits a call or says why not; `Ok` is the principal, identified once
/// (its name for the audit log, its datasets for the scope).
pub fn check<'a, T>(
    auth: &'a Auth,
    request: &Request<T>,
    call: &str,
    dataset: &str,
) -> Result<&'a Principal, Status> {
    let principal = identify(auth, request)?.ok_or_else(|| {
        crate::grpc::status::denied(Denied::Unauthenticated(format!(
            "{call} needs credentials: a client certificate or a bearer token"
        )))
    })?;
    auth.admit(principal, call, dataset)
        .map_err(crate::grpc::status::denied)?;
    Ok(principal)
}

#[cfg(test)]
mod tests {
    use super::*;
    use arbor_agent::access::Role;

    fn auth() -> Auth {
        Auth::new(vec![Principal {
            name: "nightly".into(),
            cert_cn: None,
            token_blake3: Some(token_hash("s3cret")),
            roles: vec![Role::Operator],
            datasets: Some(vec!["customers".into()]),
            max_calls_per_sec: Some(100),
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
    fn credentials_and_refusals_map_to_their_codes() {
        let a = auth();
        let compare = "AuditService/Compare";
        assert_eq!(
            check(&a, &with_token(Some("s3cret")), compare, "customers")
                .unwrap()
                .name,
            "nightly"
        );
        let code = |r: Result<&Principal, Status>| r.unwrap_err().code();
        assert_eq!(
            code(check(&a, &with_token(None), compare, "customers")),
            tonic::Code::Unauthenticated
        );
        assert_eq!(
            code(check(&a, &with_token(Some("nope")), compare, "customers")),
            tonic::Code::Unauthenticated
        );
        assert_eq!(
            code(check(
                &a,
                &with_token(Some("s3cret")),
                "RepairService/ApplyChanges",
                "customers"
            )),
            tonic::Code::PermissionDenied
        );
        assert_eq!(
            code(check(&a, &with_token(Some("s3cret")), compare, "orders")),
            tonic::Code::PermissionDenied
        );
    }
}
